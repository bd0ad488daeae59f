"""harvester.core.manifest: the seal plan (pages grouped into parts) and manifest merging."""

from __future__ import annotations

import json

import pytest

from harvester.core.layout import Commit
from harvester.core.manifest import (
    FAILED,
    FORMAT,
    PlannedPart,
    expand_ranges,
    is_safe_part_name,
    merge_manifest,
    page_ranges,
    part_name,
    plan_from_json,
    plan_parts,
    plan_to_json,
    shard_entry,
)
from harvester.core.layout import Piece

SEGMENTS = {0: ".segments/j/w0.seg", 1: ".segments/j/w1.seg"}


def commit(page: int, length: int = 100, segment: int = 0, offset: int | None = None,
           raw: int | None = None, lines: int = 1) -> Commit:
    """A committed member of ``length`` bytes for ``page``."""
    return Commit(page=page, segment=segment, offset=page * 1000 if offset is None else offset,
                  length=length, raw_bytes=raw if raw is not None else length * 3, lines=lines)


# ----------------------------------------------------------------- plan_parts

def test_part_names():
    """Parts are named part-NNNNN.jsonl.gz with five digits."""
    assert part_name(0) == "part-00000.jsonl.gz"
    assert part_name(123) == "part-00123.jsonl.gz"


@pytest.mark.parametrize("name", ["../x.jsonl.gz", "/etc/passwd", "sub/part.jsonl.gz",
                                  "..\\x.jsonl.gz", ".segments", ".part-00000.tmp", ""])
def test_a_manifest_names_no_path_out_of_its_output(name):
    """A part name read back from a manifest is opened only if it names a plain file of
    the output: no separator, no hidden or temporary file, not empty."""
    assert not is_safe_part_name(name)
    assert is_safe_part_name(part_name(7))


def test_plan_parts_copies_members_in_page_order_and_refuses_any_other():
    """Members are copied in the page order the ledger lists them; commits out of page
    order (or twice) are a bug upstream, refused rather than sealed in the wrong order."""
    commits = [commit(1), commit(2, segment=1), commit(3, segment=1)]
    [part] = plan_parts(commits, SEGMENTS, first_index=0, part_bytes=10_000)
    assert part.pages == [1, 2, 3]
    assert part.pieces == [Piece(SEGMENTS[0], 1000, 100), Piece(SEGMENTS[1], 2000, 100),
                           Piece(SEGMENTS[1], 3000, 100)]
    for wrong in ([commit(3), commit(1)], [commit(2), commit(2)]):
        with pytest.raises(ValueError, match="out of page order"):
            plan_parts(wrong, SEGMENTS, first_index=0, part_bytes=10_000)


def test_members_end_to_end_in_a_segment_are_one_piece_and_pages_ranges():
    """A run's pages lie end to end in one segment: a part copies them as one piece, and
    its pages are kept as ranges, so planning a million pages holds a few thousand
    pieces, not a million (the bytes copied are the same)."""
    commits = [commit(p, offset=(p - 1) * 100) for p in range(1, 33)]  # one run
    commits += [commit(33, segment=1, offset=0), commit(34, segment=1, offset=100)]
    commits += [commit(36, segment=1, offset=300)]  # after a gap (page 35 failed)
    [part] = plan_parts(commits, SEGMENTS, first_index=0, part_bytes=10_000)
    assert part.pieces == [Piece(SEGMENTS[0], 0, 3200), Piece(SEGMENTS[1], 0, 200),
                           Piece(SEGMENTS[1], 300, 100)]
    assert part.page_ranges == [[1, 34], [36, 36]]
    assert part.page_count == 35 and part.compressed_bytes == 3500
    assert shard_entry(part, "sha", 1)["page_ranges"] == [[1, 34], [36, 36]]
    # A plan saved before pages were ranges still loads (a finalizer resumed by a newer
    # version); one saved now round-trips.
    old = plan_to_json([part])
    old[0].pop("page_ranges"), old[0].pop("page_count")
    old[0]["pages"] = part.pages
    assert plan_from_json(old) == [part] == plan_from_json(plan_to_json([part]))


def test_plan_parts_groups_by_size():
    """A part takes members until the next would exceed part_bytes."""
    commits = [commit(p, length=40) for p in range(1, 8)]
    parts = plan_parts(commits, SEGMENTS, first_index=0, part_bytes=100)
    assert [p.pages for p in parts] == [[1, 2], [3, 4], [5, 6], [7]]
    assert all(p.compressed_bytes <= 100 for p in parts)
    assert [p.compressed_bytes for p in parts] == [80, 80, 80, 40]


def test_plan_parts_exact_fit():
    """Members that sum to exactly part_bytes share a part."""
    parts = plan_parts([commit(1, length=50), commit(2, length=50), commit(3, length=1)],
                       SEGMENTS, first_index=0, part_bytes=100)
    assert [p.pages for p in parts] == [[1, 2], [3]]


def test_plan_parts_large_member_is_its_own_part():
    """A member larger than part_bytes is never split and sits alone in its part."""
    commits = [commit(1, length=10), commit(2, length=500), commit(3, length=10)]
    parts = plan_parts(commits, SEGMENTS, first_index=0, part_bytes=100)
    assert [p.pages for p in parts] == [[1], [2], [3]]
    assert parts[1].compressed_bytes == 500 and len(parts[1].pieces) == 1


def test_plan_parts_large_first_member():
    """Even the first member, when oversized, forms one part and the next starts a new one."""
    parts = plan_parts([commit(1, length=500), commit(2, length=10)], SEGMENTS, first_index=0,
                       part_bytes=100)
    assert [p.pages for p in parts] == [[1], [2]]


def test_plan_parts_first_index_numbering():
    """Parts of a later generation are numbered from first_index on."""
    parts = plan_parts([commit(p, length=60) for p in (4, 5, 6)], SEGMENTS, first_index=3,
                       part_bytes=100)
    assert [p.name for p in parts] == ["part-00003.jsonl.gz", "part-00004.jsonl.gz",
                                       "part-00005.jsonl.gz"]


def test_plan_parts_sums_lines_and_bytes():
    """A part's lines, raw and compressed bytes are the sums over its members."""
    [part] = plan_parts([commit(1, length=10, raw=30, lines=2), commit(2, length=20, raw=70,
                                                                        lines=5)],
                        SEGMENTS, first_index=0, part_bytes=1000)
    assert (part.lines, part.raw_bytes, part.compressed_bytes) == (7, 100, 30)


def test_plan_parts_empty():
    """No commits, no parts."""
    assert plan_parts([], SEGMENTS, first_index=0, part_bytes=100) == []


def test_plan_parts_unknown_segment_raises():
    """A commit whose segment is not registered cannot be planned silently."""
    with pytest.raises(KeyError):
        plan_parts([commit(1, segment=9)], SEGMENTS, first_index=0, part_bytes=100)


# --------------------------------------------------------------- page ranges

@pytest.mark.parametrize("pages, ranges", [
    ([1, 2, 3, 7], [[1, 3], [7, 7]]),
    ([7, 3, 1, 2], [[1, 3], [7, 7]]),
    ([5], [[5, 5]]),
    ([], []),
    ([1, 3, 5], [[1, 1], [3, 3], [5, 5]]),
    ([10, 11, 12, 13, 20, 21], [[10, 13], [20, 21]]),
])
def test_page_ranges(pages, ranges):
    """Pages compress into sorted inclusive [first, last] runs."""
    assert page_ranges(pages) == ranges


@pytest.mark.parametrize("pages", [[1, 2, 3, 7], [4], list(range(1, 100, 3)), [2, 3, 9, 10, 11]])
def test_expand_ranges_inverts_page_ranges(pages):
    """expand_ranges(page_ranges(pages)) gives the sorted pages back."""
    assert list(expand_ranges(page_ranges(pages))) == sorted(pages)


def test_page_ranges_keeps_a_doubled_page_visible():
    """A page listed twice is not hidden by the compaction (verify relies on this)."""
    assert list(expand_ranges(page_ranges([1, 1, 2]))) == [1, 1, 2]


# ------------------------------------------------------------------- manifest

def merged(previous=None, *, job_id="job-1", shards=(), generation=1, total=10, committed=10,
           failed=0, state="done"):
    return merge_manifest(previous, job_id=job_id, spec={"name": "t"}, new_shards=list(shards),
                          generation=generation, state=state,
                          started_at="2024-01-01T00:00:00Z", finished_at="2024-01-01T01:00:00Z",
                          total=total, committed=committed, failed=failed)


def shard(index: int, pages: list[int], lines: int = 1, gz: int = 10, raw: int = 30,
          generation: int = 1) -> dict:
    part = PlannedPart(name=part_name(index), page_ranges=page_ranges(pages),
                       page_count=len(pages), lines=lines, raw_bytes=raw, compressed_bytes=gz)
    return shard_entry(part, "ab" * 32, generation)


def test_shard_entry():
    """A shard entry records name, page count, ranges, lines, bytes, sha256 and generation."""
    assert shard(0, [1, 2, 3, 5], lines=4, gz=11, raw=44) == {
        "name": "part-00000.jsonl.gz", "pages": 4, "page_ranges": [[1, 3], [5, 5]],
        "lines": 4, "compressed_bytes": 11, "raw_bytes": 44, "sha256": "ab" * 32,
        "generation": 1}


def test_merge_first_generation():
    """The first manifest holds the new shards, totals and page counts."""
    m = merged(shards=[shard(0, [1, 2], lines=2, gz=10, raw=30),
                       shard(1, [3], lines=1, gz=5, raw=7)], total=4, committed=3, failed=1,
               state="failed")
    assert m["format"] == FORMAT and m["job_id"] == "job-1" and m["state"] == "failed"
    assert m["job"] == {"name": "t"} and m["generation"] == 1
    assert m["pages"] == {"total": 4, "ok": 3, "failed": 1, "pending": 0}
    assert (m["lines"], m["compressed_bytes"], m["raw_bytes"]) == (3, 15, 37)
    assert [s["name"] for s in m["shards"]] == ["part-00000.jsonl.gz", "part-00001.jsonl.gz"]
    assert m["failed_file"] == FAILED
    assert m["started_at"] == "2024-01-01T00:00:00Z"
    assert m["finished_at"] == "2024-01-01T01:00:00Z"


def test_merge_keeps_previous_shards_and_appends():
    """A retry generation keeps every earlier shard unchanged and appends its own."""
    first = merged(shards=[shard(0, [1, 2], lines=2), shard(1, [4])], total=4, committed=3,
                   failed=1, state="failed")
    second = merged(json.loads(json.dumps(first)),
                    shards=[shard(2, [3], generation=2)], generation=2, total=4, committed=4,
                    failed=0)
    assert second["shards"][:2] == first["shards"]
    assert [s["name"] for s in second["shards"]] == [part_name(i) for i in range(3)]
    assert second["generation"] == 2 and second["state"] == "done"
    assert second["pages"] == {"total": 4, "ok": 4, "failed": 0, "pending": 0}
    assert second["lines"] == 4 and second["compressed_bytes"] == 30


def test_merge_does_not_mutate_previous():
    """Merging leaves the previous manifest's shard list as it was."""
    first = merged(shards=[shard(0, [1])])
    merged(first, shards=[shard(1, [2])], generation=2)
    assert len(first["shards"]) == 1


def test_merge_refuses_another_jobs_manifest():
    """A manifest of another job in the same dir is never merged into."""
    other = merged(job_id="other-job", shards=[shard(0, [1])])
    with pytest.raises(ValueError, match="other-job"):
        merged(other, job_id="job-1", shards=[shard(1, [2])], generation=2)


@pytest.mark.parametrize("total, committed, failed, pending", [
    (10, 10, 0, 0), (10, 7, 1, 2), (10, 0, 0, 10), (3, 4, 0, 0)])
def test_merge_pending(total, committed, failed, pending):
    """pending = total - ok - failed, never negative."""
    assert merged(total=total, committed=committed, failed=failed)["pages"]["pending"] == pending


def test_merge_is_json_serialisable():
    """The manifest dict dumps to JSON and back unchanged."""
    m = merged(shards=[shard(0, [1, 2])])
    assert json.loads(json.dumps(m)) == m


# ------------------------------------------------------------------ plan JSON

def test_plan_json_round_trip():
    """plan_from_json(json(plan_to_json(parts))) rebuilds the same parts, pieces included."""
    commits = [commit(p, length=40, segment=p % 2) for p in range(1, 8)]
    parts = plan_parts(commits, SEGMENTS, first_index=2, part_bytes=100)
    again = plan_from_json(json.loads(json.dumps(plan_to_json(parts))))
    assert again == parts
    assert all(isinstance(piece, Piece) for part in again for piece in part.pieces)


def test_plan_json_empty():
    """An empty plan round-trips to an empty list."""
    assert plan_from_json(plan_to_json([])) == []


def test_pieces_are_packed_merged_and_round_trip_through_the_plan():
    """Pieces keep ~24 bytes a member (200,000 members that do not merge: under 10 MB
    where Piece objects took ~30), merge members end to end in a segment, read back
    by index, slice and iteration, and load from a plan of either format."""
    import tracemalloc

    from harvester.core.layout import Pieces

    tracemalloc.start()
    pieces = Pieces()
    for i in range(200_000):
        pieces.append(Piece(SEGMENTS[i % 2], i * 1000, 100))  # alternate segments: no merge
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(pieces) == 200_000 and peak < 10 * 2**20, peak
    assert pieces[7] == Piece(SEGMENTS[1], 7000, 100) and pieces[-1].offset == 199_999_000
    assert pieces[1:3] == [Piece(SEGMENTS[1], 1000, 100), Piece(SEGMENTS[0], 2000, 100)]

    merged = Pieces([Piece("a", 0, 10), Piece("a", 10, 5), Piece("b", 15, 1), Piece("a", 15, 1)])
    assert list(merged) == [Piece("a", 0, 15), Piece("b", 15, 1), Piece("a", 15, 1)]
    assert Pieces.from_json(merged.to_json()) == merged
    old = [{"segment": "a", "offset": 0, "length": 10}, {"segment": "a", "offset": 10, "length": 5}]
    assert Pieces.from_json(old) == [Piece("a", 0, 15)]
    assert json.loads(json.dumps(plan_to_json([PlannedPart("p", pieces=merged)])))
