"""``harvest verify DIR``: an output directory checked against its manifest.

Reads every shard in constant memory: size and sha256 as recorded, a gzip
stream that ends cleanly, the recorded number of lines, each line complete
JSON (checked by the same incremental parser as the harvest), each page once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..core.body import BodyInspector
from ..core.manifest import FAILED, SUCCESS, expand_ranges, is_safe_part_name
from ..edges.store import Store, open_store
from ..errors import InvalidJSON, OutputDirError, StorageError, VerifyError
from .finalizer import read_manifest
from .output import gunzip

_PAGE_KEY = re.compile(rb'^\{"page":(\d+),')


@dataclass
class Report:
    shards: int = 0
    pages: int = 0
    lines: int = 0
    raw_bytes: int = 0
    problems: list[str] = field(default_factory=list)
    job_id: str = ""
    state: str = ""
    failed: int = 0
    pending: int = 0
    capped: str | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Every page the job has is committed (intact is checked separately)."""
        return self.state == "done" and self.failed == 0 and self.pending == 0


def verify(directory: str | Path) -> Report:
    """Check ``directory`` (a local directory or ``s3://bucket/prefix``) is intact; the
    report says whether it is also complete.

    Raises :class:`VerifyError` for damage (a shard cut short, a checksum that
    does not match, a page twice), :class:`OutputDirError` without a manifest.
    """
    out_dir = open_store(str(directory))
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise OutputDirError("has no _manifest.json: not the output of a finished harvest",
                             path=out_dir.location)
    counts = manifest["pages"]
    report = Report(job_id=manifest.get("job_id", ""), state=manifest.get("state", ""),
                    failed=counts["failed"], pending=counts["pending"],
                    capped=manifest.get("capped"), error=manifest.get("error"))
    pages_mode = manifest["job"]["output"]["mode"] == "pages"
    seen: set[int] = set()
    for shard in manifest["shards"]:
        report.shards += 1
        _check_shard(out_dir, shard, pages_mode, seen, report)
    if pages_mode and len(seen) != counts["ok"]:
        report.problems.append(f"manifest says {counts['ok']} pages ok, shards hold {len(seen)}")
    failed_lines = (out_dir.read(FAILED) or b"").splitlines()
    if len(failed_lines) != counts["failed"]:
        report.problems.append(f"{FAILED} has {len(failed_lines)} lines, manifest says"
                               f" {counts['failed']} failed")
    success = out_dir.exists(SUCCESS)
    complete = counts["failed"] == 0 and counts["pending"] == 0 and manifest["state"] == "done"
    if success and not complete:
        report.problems.append(f"{SUCCESS} present but not every page is committed")
    if complete and not success:
        report.problems.append(f"every page is committed but {SUCCESS} is missing")
    if report.problems:
        raise VerifyError(out_dir.location, report.problems)
    return report


def _check_shard(out_dir: Store, shard: dict, pages_mode: bool, seen: set[int],
                 report: Report) -> None:
    name = shard["name"]
    blocks = out_dir.stream(name) if is_safe_part_name(name) else None
    if blocks is None:
        report.problems.append(f"{name}: missing")
        return
    digest = hashlib.sha256()
    size = raw = lines = 0
    line = _LineChecker()
    found_pages: list[int] = []

    def hashed(blocks: Iterator[bytes]) -> Iterator[bytes]:
        nonlocal size
        for block in blocks:
            size += len(block)
            digest.update(block)
            yield block

    try:
        for out in gunzip(hashed(blocks)):
            raw += len(out)
            lines += line.feed(out, found_pages)
        line.finish()
    except (InvalidJSON, StorageError) as exc:
        report.problems.append(f"{name}: {exc}")
        return
    if size != shard["compressed_bytes"]:
        report.problems.append(f"{name}: {size} bytes, manifest says {shard['compressed_bytes']}")
    if digest.hexdigest() != shard["sha256"]:
        report.problems.append(f"{name}: sha256 does not match the manifest")
    if lines != shard["lines"]:
        report.problems.append(f"{name}: {lines} lines, manifest says {shard['lines']}")
    if raw != shard["raw_bytes"]:
        report.problems.append(f"{name}: {raw} raw bytes, manifest says {shard['raw_bytes']}")
    if pages_mode:
        expected = list(expand_ranges(shard["page_ranges"]))
        if sorted(found_pages) != expected:
            report.problems.append(f"{name}: pages differ from the manifest's page_ranges")
        doubled = seen.intersection(found_pages)
        if doubled or len(set(found_pages)) != len(found_pages):
            report.problems.append(f"{name}: pages appear more than once: {sorted(doubled)[:10]}")
        seen.update(found_pages)
    report.pages += len(found_pages)
    report.lines += lines
    report.raw_bytes += raw


class _LineChecker:
    """Splits decompressed bytes into lines and checks each is complete JSON."""

    def __init__(self) -> None:
        self._inspector = BodyInspector()
        self._head = b""

    def feed(self, data: bytes, pages: list[int]) -> int:
        complete = 0
        while data:
            newline = data.find(b"\n")
            piece = data if newline < 0 else data[:newline]
            if len(self._head) < 32:
                self._head += piece[:32]
            self._inspector.feed(piece)
            if newline < 0:
                break
            self._inspector.finish()
            match = _PAGE_KEY.match(self._head)
            if match:
                pages.append(int(match.group(1)))
            self._inspector = BodyInspector()
            self._head = b""
            complete += 1
            data = data[newline + 1:]
        return complete

    def finish(self) -> None:
        if self._head:
            raise InvalidJSON("last line has no newline: the shard is cut short")


def summary(report: Report) -> str:
    return json.dumps({"job_id": report.job_id, "state": report.state,
                       "complete": report.complete, "shards": report.shards,
                       "pages": report.pages, "lines": report.lines,
                       "raw_bytes": report.raw_bytes, "failed": report.failed,
                       "pending": report.pending, "capped": report.capped})
