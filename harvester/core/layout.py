"""Where a job's output lives, as data: no I/O.

Names inside an output dir, an ``s3://bucket/prefix`` location taken apart, a
committed page's place in a segment (:class:`Commit`, as the ledger stores it),
and a member to copy into a part (:class:`Piece`). The edges (``edges.ledger``,
``edges.store``, ``edges.storage``) read and write these; the core plans with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import JobSpecError

SEGMENTS_DIR = ".segments"
CLAIM_FILE = ".harvest-job"


def is_object_store(location: str) -> bool:
    return location.startswith("s3://")


# S3's rule for bucket names (3-63 lowercase letters, digits, dots and hyphens).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` as (bucket, prefix); JobSpecError (key output.dir) for
    anything else, credentials in the URL above all: they come from the environment."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise JobSpecError("holds credentials: give them as AWS_ACCESS_KEY_ID and"
                           " AWS_SECRET_ACCESS_KEY in the environment, never in the job file",
                           key="output.dir")
    if parts.scheme != "s3" or not _BUCKET.fullmatch(parts.netloc or "") or parts.query \
            or parts.fragment:
        raise JobSpecError(f"{url!r} is not an s3://bucket/prefix location (bucket names are"
                           " 3-63 lowercase letters, digits, dots and hyphens)",
                           key="output.dir")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise JobSpecError(f"{url!r}: the prefix may not hold empty, '.' or '..' parts",
                           key="output.dir")
    return parts.netloc, prefix


@dataclass(frozen=True)
class Piece:
    """A committed member to copy: ``length`` bytes at ``offset`` of ``segment``."""

    segment: str  # path relative to the output dir
    offset: int
    length: int


@dataclass(frozen=True)
class SealedPart:
    name: str
    compressed_bytes: int
    sha256: str


@dataclass(frozen=True)
class Commit:
    page: int
    segment: int
    offset: int
    length: int
    raw_bytes: int
    lines: int

    def encode(self) -> str:
        return f"{self.segment}:{self.offset}:{self.length}:{self.raw_bytes}:{self.lines}"

    @classmethod
    def decode(cls, page: int, value: str) -> "Commit":
        location = value.split("|", 1)[0]  # after "|": the pages its commit claimed
        segment, offset, length, raw, lines = (int(v) for v in location.split(":"))
        return cls(page, segment, offset, length, raw, lines)


def decode_pages(text: str) -> list[int]:
    """The pages a commit claimed, as its script stored them: ``"1249-1280,1300"``."""
    pages: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        pages.extend(range(int(first), int(last or first) + 1))
    return pages
