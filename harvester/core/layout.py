"""Where a job's output lives, as data: no I/O.

Names inside an output dir, an ``s3://bucket/prefix`` location taken apart, a
committed page's place in a segment (:class:`Commit`, as the ledger stores it),
and a member to copy into a part (:class:`Piece`). The edges (``edges.ledger``,
``edges.store``, ``edges.storage``) read and write these; the core plans with them.
"""

from __future__ import annotations

import base64
import re
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload
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


class Pieces(Sequence[Piece]):
    """Members to copy, in order, packed: a table of segment names and three arrays of
    integers (~24 bytes a piece, where Piece objects cost ~150), members that lie end to
    end in one segment (a run's pages) merged into one. A million-page plan fits in a
    few MB, in memory and in its JSON."""

    def __init__(self, pieces: Iterable[Piece] = ()):
        self._names: list[str] = []
        self._ids: dict[str, int] = {}
        self._segment = array("q")
        self._offset = array("q")
        self._length = array("q")
        for piece in pieces:
            self.append(piece)

    def append(self, piece: Piece) -> None:
        segment = self._ids.get(piece.segment)
        if segment is None:
            segment = self._ids[piece.segment] = len(self._names)
            self._names.append(piece.segment)
        if self._length and self._segment[-1] == segment and \
                self._offset[-1] + self._length[-1] == piece.offset:
            self._length[-1] += piece.length
        else:
            self._segment.append(segment)
            self._offset.append(piece.offset)
            self._length.append(piece.length)

    def __len__(self) -> int:
        return len(self._length)

    @overload
    def __getitem__(self, index: int) -> Piece: ...
    @overload
    def __getitem__(self, index: slice) -> "list[Piece]": ...

    def __getitem__(self, index: int | slice) -> Piece | list[Piece]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Piece(self._names[self._segment[index]], self._offset[index],
                     self._length[index])

    def __iter__(self) -> Iterator[Piece]:
        for segment, offset, length in zip(self._segment, self._offset, self._length):
            yield Piece(self._names[segment], offset, length)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"Pieces({list(self)!r})"

    def to_json(self) -> dict[str, Any]:
        return {"segments": self._names,
                **{name: _pack(getattr(self, f"_{name}")) for name in
                   ("segment", "offset", "length")}}

    @classmethod
    def from_json(cls, data: Any) -> "Pieces":
        if isinstance(data, list):  # a plan written before pieces were packed
            return cls(Piece(**p) for p in data)
        pieces = cls()
        pieces._names = list(data["segments"])
        pieces._ids = {name: i for i, name in enumerate(pieces._names)}
        pieces._segment, pieces._offset, pieces._length = (
            _unpack(data[name]) for name in ("segment", "offset", "length"))
        return pieces


def _pack(values: array) -> str:
    if sys.byteorder == "big":  # the plan is read by any host of the cluster: little-endian
        values = array(values.typecode, values)
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode()


def _unpack(text: str) -> array:
    values = array("q")
    values.frombytes(base64.b64decode(text))
    if sys.byteorder == "big":
        values.byteswap()
    return values


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


# A commit bucket's field holding its sealed pages as a bitmap (lua/compact.lua): hex,
# two digits a byte, byte k for pages 8k..8k+7 of the bucket, lowest bit first.
FOLDED = "done"


def folded_pages(bucket: int, bitmap: str | None) -> set[int]:
    """The pages of commit bucket ``bucket`` (128 pages) its folded bitmap holds."""
    if not bitmap:
        return set()
    base = bucket * 128
    return {base + 8 * k + i for k, byte in enumerate(bytes.fromhex(bitmap))
            for i in range(8) if byte >> i & 1}


def decode_pages(text: str) -> list[int]:
    """The pages a commit claimed, as its script stored them: ``"1249-1280,1300"``."""
    pages: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        pages.extend(range(int(first), int(last or first) + 1))
    return pages
