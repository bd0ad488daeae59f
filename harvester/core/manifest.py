"""The manifest and the seal plan: pure functions, no I/O.

A job is sealed in *generations*: the first finalization seals every page
committed by then; each ``harvest retry`` adds a generation that seals only the
pages committed since, into new parts numbered after the old ones, and the
manifest is the previous one merged with the new parts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .layout import Commit, Piece, Pieces

FORMAT = "harvester/1"
MANIFEST = "_manifest.json"
FAILED = "_failed.jsonl"
SUCCESS = "_SUCCESS"


@dataclass
class PlannedPart:
    """A part to write: its members as pieces of segments, its pages as ranges.

    Both stay small whatever the page count: pages are ``[first, last]`` ranges, and
    members that lie end to end in one segment (a run's pages) are one piece.
    """

    name: str
    pieces: Pieces = field(default_factory=Pieces)
    page_ranges: list[list[int]] = field(default_factory=list)
    page_count: int = 0
    lines: int = 0
    raw_bytes: int = 0
    compressed_bytes: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.pieces, Pieces):
            self.pieces = Pieces(self.pieces)

    @property
    def pages(self) -> list[int]:
        return list(expand_ranges(self.page_ranges))

    def add(self, commit: Commit, segment: str) -> None:
        self.pieces.append(Piece(segment, commit.offset, commit.length))
        if self.page_ranges and self.page_ranges[-1][1] + 1 == commit.page:
            self.page_ranges[-1][1] = commit.page
        else:
            self.page_ranges.append([commit.page, commit.page])
        self.page_count += 1
        self.lines += commit.lines
        self.raw_bytes += commit.raw_bytes
        self.compressed_bytes += commit.length


def part_name(index: int) -> str:
    return f"part-{index:05d}.jsonl.gz"


def is_safe_part_name(name: str) -> bool:
    """Whether a part name read from a manifest may be opened: a file of the output
    itself, never a path out of it or one of its hidden files (a manifest is read
    back from a directory or bucket that others may have written to)."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def plan_parts(commits: Iterable[Commit], segments: dict[int, str], *, first_index: int,
               part_bytes: int) -> list[PlannedPart]:
    """Group committed members, in page order, into parts of about ``part_bytes``.

    ``commits`` come in ascending page order (as :meth:`Ledger.commits` yields them)
    and are consumed as they come: a million pages plan in the memory of their pieces,
    not of their commits. A member is never split: a page larger than ``part_bytes``
    is a part of its own.
    """
    parts: list[PlannedPart] = []
    current: PlannedPart | None = None
    previous = 0
    for commit in commits:
        if commit.page <= previous:
            raise ValueError(f"commits out of page order: {commit.page} after {previous}")
        previous = commit.page
        if current is None or (current.compressed_bytes and
                               current.compressed_bytes + commit.length > part_bytes):
            current = PlannedPart(name=part_name(first_index + len(parts)))
            parts.append(current)
        current.add(commit, segments[commit.segment])
    return parts


def page_ranges(pages: Iterable[int]) -> list[list[int]]:
    """``[1, 2, 3, 7]`` -> ``[[1, 3], [7, 7]]``: pages per shard, compactly."""
    ranges: list[list[int]] = []
    for page in sorted(pages):
        if ranges and page == ranges[-1][1] + 1:
            ranges[-1][1] = page
        else:
            ranges.append([page, page])
    return ranges


def expand_ranges(ranges: Iterable[Iterable[int]]) -> Iterable[int]:
    for first, last in ranges:
        yield from range(first, last + 1)


def shard_entry(part: PlannedPart, sha256: str, generation: int) -> dict[str, Any]:
    return {
        "name": part.name,
        "pages": part.page_count,
        "page_ranges": [list(r) for r in part.page_ranges],
        "lines": part.lines,
        "compressed_bytes": part.compressed_bytes,
        "raw_bytes": part.raw_bytes,
        "sha256": sha256,
        "generation": generation,
    }


def merge_manifest(previous: dict[str, Any] | None, *, job_id: str, spec: dict[str, Any],
                   new_shards: list[dict[str, Any]], generation: int, state: str,
                   started_at: str, finished_at: str, total: int, committed: int,
                   failed: int, error: str | None = None,
                   capped: str | None = None) -> dict[str, Any]:
    """The manifest after ``generation``: the previous shards plus the new ones.

    ``error`` says why a job stopped before its end (e.g. the API caps its page
    size); ``capped`` that max_pages ended it while the API had more pages.
    """
    if previous is not None and previous.get("job_id") != job_id:
        raise ValueError(f"manifest belongs to job {previous.get('job_id')!r}, not {job_id!r}")
    shards = list(previous["shards"]) if previous else []
    shards.extend(new_shards)
    pending = max(0, total - committed - failed)
    return {
        "format": FORMAT,
        "job_id": job_id,
        "state": state,
        "job": spec,
        "started_at": started_at,
        "finished_at": finished_at,
        "generation": generation,
        "pages": {"total": total, "ok": committed, "failed": failed, "pending": pending},
        "error": error,
        "capped": capped,
        "lines": sum(s["lines"] for s in shards),
        "compressed_bytes": sum(s["compressed_bytes"] for s in shards),
        "raw_bytes": sum(s["raw_bytes"] for s in shards),
        "shards": shards,
        "failed_file": FAILED,
    }


def plan_to_json(parts: list[PlannedPart]) -> list[dict[str, Any]]:
    return [{"name": part.name, "pieces": part.pieces.to_json(),
             "page_ranges": part.page_ranges, "page_count": part.page_count,
             "lines": part.lines, "raw_bytes": part.raw_bytes,
             "compressed_bytes": part.compressed_bytes} for part in parts]


def plan_from_json(data: list[dict[str, Any]]) -> list[PlannedPart]:
    parts = []
    for part in data:
        fields = {**part, "pieces": Pieces.from_json(part["pieces"])}
        if "pages" in fields:  # a plan saved before pages were kept as ranges
            pages = fields.pop("pages")
            fields.update(page_ranges=page_ranges(pages), page_count=len(pages))
        parts.append(PlannedPart(**fields))
    return parts
