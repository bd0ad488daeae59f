"""harvester.engine.verify.verify: an output dir checked against its manifest.

Each test builds a small output dir by hand with the real storage and manifest
functions (segments -> write_part -> shard_entry -> merge_manifest), then
damages one thing and expects a problem naming the cause.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harvester.errors import VerifyError
from harvester.core.manifest import (
    FAILED,
    MANIFEST,
    SUCCESS,
    PlannedPart,
    merge_manifest,
    page_ranges,
    part_name,
    shard_entry,
)
from harvester.edges.storage import Piece, SegmentWriter, write_part
from harvester.engine.verify import Report, verify

SEGMENT = ".segments/job-1/w.seg"


def page_line(page: int, body: bytes = b'{"data": [1, 2]}') -> bytes:
    """A pages-mode output line, as the runner writes it."""
    return (f'{{"page":{page},"url":"https://api.example.com/v1/items?page={page}",'
            f'"status":200,"fetched_at":"2024-01-01T00:00:00.000Z","body":').encode() + body + b"}\n"


@dataclass
class Built:
    out: Path
    manifest: dict
    parts: list[Path] = field(default_factory=list)

    def save_manifest(self) -> None:
        (self.out / MANIFEST).write_text(json.dumps(self.manifest), encoding="utf-8")


def build(out: Path, shards: list[list[bytes]], *, pages: list[list[int]] | None = None,
          mode: str = "pages", failed: list[dict] | None = None, pending: int = 0,
          success: bool | None = None, state: str | None = None,
          manifest_pages: list[list[int]] | None = None) -> Built:
    """An output dir with one part per entry of ``shards`` (each a list of lines/members).

    ``pages`` gives the page numbers per shard (default: parsed from the lines);
    ``manifest_pages`` overrides what the manifest records.
    """
    out.mkdir(parents=True, exist_ok=True)
    segment = SegmentWriter(out / SEGMENT, fsync=False)
    entries = []
    paths = []
    page_lists = pages or [[json.loads(line)["page"] for line in lines] for lines in shards]
    for index, (lines, page_list) in enumerate(zip(shards, page_lists)):
        part = PlannedPart(name=part_name(index))
        for line in lines:
            member = segment.begin_page(6)
            member.write(line)
            done = member.commit()
            part.pieces.append(Piece(SEGMENT, done.offset, done.length))
            part.lines += line.count(b"\n")
            part.raw_bytes += done.raw_bytes
            part.compressed_bytes += done.length
        listed = manifest_pages[index] if manifest_pages else page_list
        part.page_ranges, part.page_count = page_ranges(listed), len(listed)
        sealed = write_part(out, part.name, part.pieces)
        entries.append(shard_entry(part, sealed.sha256, 1))
        paths.append(out / part.name)
    segment.close()
    failures = failed or []
    ok = len({p for page_list in page_lists for p in page_list}) if mode == "pages" else \
        sum(len(lines) for lines in shards)
    final_state = state or ("failed" if failures else "done")
    manifest = merge_manifest(
        None, job_id="job-1",
        spec={"name": "t", "output": {"dir": str(out), "mode": mode, "records_path": "data",
                                      "compress_level": 6}},
        new_shards=entries, generation=1, state=final_state,
        started_at="2024-01-01T00:00:00Z", finished_at="2024-01-01T00:01:00Z",
        total=ok + len(failures) + pending, committed=ok, failed=len(failures))
    built = Built(out, manifest, paths)
    built.save_manifest()
    (out / FAILED).write_bytes(b"".join(json.dumps(f).encode() + b"\n" for f in failures))
    if success is None:
        success = not failures and not pending and final_state == "done"
    if success:
        (out / SUCCESS).touch()
    return built


def good(tmp_path: Path) -> Built:
    """Two shards, pages 1-5, everything committed."""
    return build(tmp_path / "out", [[page_line(1), page_line(2), page_line(3)],
                                     [page_line(4), page_line(5)]])


def problems(out: Path) -> list[str]:
    """The problems verify() reports (it must raise)."""
    with pytest.raises(VerifyError) as info:
        verify(out)
    assert info.value.problems
    assert str(out) in str(info.value)
    return info.value.problems


def test_good_dir_passes(tmp_path):
    """A dir built exactly as the finalizer does passes, with the right counts."""
    built = good(tmp_path)
    report = verify(built.out)
    assert isinstance(report, Report) and report.problems == []
    assert (report.shards, report.pages, report.lines) == (2, 5, 5)
    assert report.raw_bytes == built.manifest["raw_bytes"]
    assert report.complete


def test_good_dir_with_failures_passes(tmp_path):
    """A failed job whose _failed.jsonl matches and has no _SUCCESS is intact, and the
    report says it is incomplete (the CLI exits 1 for it)."""
    built = build(tmp_path / "out", [[page_line(1), page_line(3)]],
                  failed=[{"page": 2, "url": "u", "attempts": 3, "error": "503"}])
    report = verify(built.out)
    assert report.pages == 2 and report.failed == 1 and not report.complete


def test_good_records_dir_passes(tmp_path):
    """Records mode: lines are records, not pages; counts and checksums still checked."""
    records = [b'{"id": 1}\n{"id": 2}\n', b'{"id": 3}\n']
    built = build(tmp_path / "out", [records], pages=[[1, 2]], mode="records")
    built.manifest["pages"].update(total=2, ok=2)
    built.save_manifest()
    report = verify(built.out)
    assert report.lines == 3 and report.pages == 0


def test_no_manifest(tmp_path):
    """A dir without _manifest.json is not a harvest output: OutputDirError naming it."""
    from harvester.errors import OutputDirError

    (tmp_path / "empty").mkdir()
    with pytest.raises(OutputDirError) as info:
        verify(tmp_path / "empty")
    assert MANIFEST in str(info.value)


def test_truncated_shard(tmp_path):
    """A shard cut short (gzip ends mid-member) is reported as cut short."""
    built = good(tmp_path)
    part = built.parts[1]
    part.write_bytes(part.read_bytes()[:-5])
    found = problems(built.out)
    assert any(p.startswith(part.name) and "cut short" in p for p in found), found


def test_truncated_at_member_boundary(tmp_path):
    """A shard missing its whole last member has wrong size, sha256, lines and pages."""
    built = build(tmp_path / "out", [[page_line(1), page_line(2)]])
    part = built.parts[0]
    data = part.read_bytes()
    # The second member starts at the second gzip header (mtime 0, OS 255).
    first_member_len = data.index(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff", 1)
    part.write_bytes(data[:first_member_len])
    found = " | ".join(problems(built.out))
    assert "sha256" in found and "1 lines, manifest says 2" in found
    assert "pages differ" in found and "shards hold 1" in found


def test_flipped_byte_in_header(tmp_path):
    """A byte changed where gzip does not notice (the mtime) is caught by the sha256."""
    built = good(tmp_path)
    part = built.parts[0]
    data = bytearray(part.read_bytes())
    data[5] ^= 0xFF
    part.write_bytes(bytes(data))
    assert problems(built.out) == [f"{part.name}: sha256 does not match the manifest"]


def test_flipped_byte_in_crc(tmp_path):
    """A changed CRC trailer makes the shard fail gzip's own check, naming the shard."""
    built = good(tmp_path)
    part = built.parts[1]
    data = bytearray(part.read_bytes())
    data[-6] ^= 0x01
    part.write_bytes(bytes(data))
    found = problems(built.out)
    assert any(p.startswith(f"{part.name}: not a valid gzip stream") and "checksum" in p.lower()
               for p in found), found


def test_flipped_byte_in_data(tmp_path):
    """A changed byte inside the compressed data is reported for that shard."""
    built = build(tmp_path / "out", [[page_line(1, b'{"data": "' + b"x" * 2000 + b'"}')]])
    part = built.parts[0]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x10
    part.write_bytes(bytes(data))
    found = problems(built.out)
    assert any(p.startswith(f"{part.name}: not a valid gzip stream") for p in found), found


def test_missing_shard(tmp_path):
    """A shard in the manifest but not on disk is reported missing."""
    built = good(tmp_path)
    built.parts[0].unlink()
    found = problems(built.out)
    assert f"{built.parts[0].name}: missing" in found


@pytest.mark.parametrize("name", ["../escape.jsonl.gz", ".hidden.jsonl.gz", "sub/part.jsonl.gz"])
def test_shard_name_outside_dir_is_missing(tmp_path, name):
    """A manifest naming a path outside DIR (or a hidden temp file) is never read."""
    built = good(tmp_path)
    outside = tmp_path / "escape.jsonl.gz"
    outside.write_bytes(built.parts[0].read_bytes())
    built.manifest["shards"][0]["name"] = name
    built.save_manifest()
    assert f"{name}: missing" in problems(built.out)


def test_doubled_page_across_shards(tmp_path):
    """A page present in two shards is reported as appearing more than once."""
    built = build(tmp_path / "out", [[page_line(1), page_line(2)], [page_line(2), page_line(3)]])
    found = problems(built.out)
    assert any(p.startswith(built.parts[1].name) and "more than once" in p and "[2]" in p
               for p in found), found


def test_doubled_page_within_shard(tmp_path):
    """A page written twice into the same shard is reported as appearing more than once."""
    built = build(tmp_path / "out", [[page_line(1), page_line(2), page_line(2)]])
    found = problems(built.out)
    assert any("more than once" in p for p in found), found


def test_pages_differ_from_ranges(tmp_path):
    """A shard whose lines hold other pages than its page_ranges say is reported."""
    built = build(tmp_path / "out", [[page_line(1), page_line(2)]], manifest_pages=[[1, 3]])
    assert any("pages differ" in p for p in problems(built.out))


def test_ok_count_mismatch(tmp_path):
    """A manifest claiming more ok pages than the shards hold is reported."""
    built = good(tmp_path)
    built.manifest["pages"]["ok"] = 6
    built.manifest["pages"]["total"] = 6
    built.save_manifest()
    assert "manifest says 6 pages ok, shards hold 5" in problems(built.out)


def test_invalid_json_line(tmp_path):
    """A line that is not complete JSON (a half page) is reported for its shard."""
    built = build(tmp_path / "out", [[page_line(1), page_line(2, b'{"data": [1, 2')]],
                  pages=[[1, 2]])
    found = problems(built.out)
    assert any(p.startswith(built.parts[0].name) and "JSON" in p for p in found), found


def test_last_line_without_newline(tmp_path):
    """A shard whose last line lacks its newline is reported as cut short."""
    line = page_line(1)[:-1]
    built = build(tmp_path / "out", [[line]], pages=[[1]])
    found = problems(built.out)
    assert any("no newline" in p for p in found), found


def test_success_with_failures(tmp_path):
    """_SUCCESS next to failed pages is reported."""
    built = build(tmp_path / "out", [[page_line(1)]], failed=[{"page": 2}], success=True)
    assert f"{SUCCESS} present but not every page is committed" in problems(built.out)


def test_success_with_pending_pages(tmp_path):
    """_SUCCESS while pages are still pending is reported."""
    built = build(tmp_path / "out", [[page_line(1)]], pending=3, state="cancelled", success=True)
    assert f"{SUCCESS} present but not every page is committed" in problems(built.out)


def test_complete_without_success(tmp_path):
    """A complete job whose _SUCCESS is missing is reported."""
    built = good(tmp_path)
    (built.out / SUCCESS).unlink()
    assert f"every page is committed but {SUCCESS} is missing" in problems(built.out)


def test_failed_file_count_mismatch(tmp_path):
    """_failed.jsonl with a different number of lines than failed pages is reported."""
    built = build(tmp_path / "out", [[page_line(1)]], failed=[{"page": 2}, {"page": 3}])
    (built.out / FAILED).write_bytes(json.dumps({"page": 2}).encode() + b"\n")
    assert f"{FAILED} has 1 lines, manifest says 2 failed" in problems(built.out)


def test_failed_file_missing(tmp_path):
    """A failed job without _failed.jsonl is reported."""
    built = build(tmp_path / "out", [[page_line(1)]], failed=[{"page": 2}])
    (built.out / FAILED).unlink()
    assert f"{FAILED} has 0 lines, manifest says 1 failed" in problems(built.out)


def test_raw_bytes_mismatch(tmp_path):
    """A manifest whose raw_bytes for a shard is wrong is reported."""
    built = good(tmp_path)
    built.manifest["shards"][0]["raw_bytes"] += 1
    built.save_manifest()
    found = problems(built.out)
    assert len(found) == 1 and "raw bytes" in found[0]


def test_verify_memory_is_bounded_for_highly_compressible_pages(tmp_path):
    """Verifying a shard holding a 64 MB (whitespace-padded) page peaks well below 64 MB."""
    out = tmp_path / "out"
    out.mkdir()
    segment = SegmentWriter(out / SEGMENT, fsync=False)
    member = segment.begin_page(6)
    prefix = page_line(1, b"[")[:-2]  # up to and including '"body":['
    member.write(prefix)
    block = b" " * (1 << 20)
    for _ in range(64):
        member.write(block)
    member.write(b"]}\n")
    done = member.commit()
    segment.close()
    part = PlannedPart(name=part_name(0), pieces=[Piece(SEGMENT, done.offset, done.length)],
                       page_ranges=[[1, 1]], page_count=1, lines=1, raw_bytes=done.raw_bytes,
                       compressed_bytes=done.length)
    sealed = write_part(out, part.name, part.pieces)
    manifest = merge_manifest(
        None, job_id="job-1", spec={"output": {"mode": "pages"}},
        new_shards=[shard_entry(part, sealed.sha256, 1)], generation=1, state="done",
        started_at="", finished_at="", total=1, committed=1, failed=0)
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / FAILED).write_bytes(b"")
    (out / SUCCESS).touch()
    assert os.path.getsize(out / part.name) < (1 << 20)  # one read block holds it all
    tracemalloc.start()
    try:
        verify(out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * (1 << 20), f"peak {peak / 1e6:.0f} MB"
