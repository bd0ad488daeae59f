"""Deterministic records and response bodies for the demo API.

Everything here is a pure function of its arguments, so the same request
always yields the same bytes: tests compute the expected source with
:func:`record`, and the API caches small page bodies instead of re-encoding
them on every request (the demo shares a small machine with the harvester
under benchmark, so every microsecond it spends is stolen from the subject).

Huge bodies (``/big``) are never built: they are laid out arithmetically
around one precomputed ~1 MiB block of records and streamed as repeats of that
same ``bytes`` object, which costs no generation work at all.
"""

from __future__ import annotations

import bisect
import functools
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

JSON = "application/json"
NDJSON = "application/x-ndjson"

# Chunk size of streamed bodies: large enough that per-chunk overhead
# (one ASGI message, one transport write) is negligible.
CHUNK_BYTES = 1 << 20


def record(n: int, pad: int = 0) -> dict:
    """Record number ``n`` (1-based, global across pages); ``pad`` adds a ``"pad"`` field of ``pad``
    x's."""
    item = {
        "id": n,
        "name": f"item-{n}",
        "value": (n * 7919) % 100003,
        "price": f"{n * 1.25:.2f}",
        "tags": [f"t{n % 5}", f"t{n % 3}"],
        "note": f"unicode ✓ é {n}",
    }
    if pad > 0:
        item["pad"] = "x" * pad
    return item


def records(first: int, last: int, pad: int = 0) -> list[dict]:
    """Records ``first..last`` inclusive (empty when ``last < first``)."""
    return [record(n, pad) for n in range(first, last + 1)]


def page_records(page: int, per_page: int, pages: int, pad: int = 0) -> list[dict]:
    """The records of 1-based ``page`` of a ``pages``-page listing; empty past the last page."""
    if page > pages:
        return []
    first = (page - 1) * per_page + 1
    return records(first, first + per_page - 1, pad)


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as UTF-8, so bodies exercise real multi-byte text)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def encode_jsonl(items: list[dict]) -> bytes:
    """JSON Lines: one compact JSON document per line, each line ending in a newline."""
    return b"".join(encode_json(item) + b"\n" for item in items)


# Cursors are opaque to clients; internally "c" + the page number in base 36.
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def encode_cursor(page: int) -> str:
    """The opaque cursor that designates 1-based ``page``."""
    digits = ""
    while True:
        page, rest = divmod(page, 36)
        digits = _BASE36[rest] + digits
        if page == 0:
            return "c" + digits


def decode_cursor(cursor: str) -> int:
    """The page designated by ``cursor``; ``ValueError`` if it is not one of ours."""
    if len(cursor) < 2 or cursor[0] != "c" or not cursor[1:].isalnum() or not cursor[1:].isascii():
        raise ValueError(f"invalid cursor {cursor!r}")
    page = int(cursor[1:], 36)
    if page < 1:
        raise ValueError(f"invalid cursor {cursor!r}")
    return page


@dataclass(frozen=True)
class Body:
    """A response body whose exact length is known before its first byte is sent.

    ``content`` holds the whole body when it is small enough to keep in
    memory; otherwise only ``iter_chunks`` can produce it, chunk by chunk.
    """

    length: int
    media_type: str
    iter_chunks: Callable[[], Iterator[bytes]]
    content: bytes | None = None

    @classmethod
    def in_memory(cls, content: bytes, media_type: str = JSON) -> Body:
        return cls(len(content), media_type, lambda: iter((content,)), content)


class BodyCache:
    """A least-recently-used cache of encoded bodies, bounded by total bytes.

    Bodies larger than ``max_item_bytes`` are built on demand and not kept,
    so a request for a huge padded page cannot evict everything else.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_item_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._bodies: OrderedDict[tuple, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple, build: Callable[[], bytes]) -> bytes:
        body = self._bodies.get(key)
        if body is not None:
            self._bodies.move_to_end(key)
            return body
        body = build()
        if len(body) <= self.max_item_bytes:
            self._bodies[key] = body
            self._bytes += len(body)
            while self._bytes > self.max_bytes:
                _, evicted = self._bodies.popitem(last=False)
                self._bytes -= len(evicted)
        return body


@dataclass(frozen=True)
class _RecordBlock:
    """Records 1..k joined by commas, just under one chunk long, with each record's end offset."""

    data: bytes
    record_ends: list[int]


@functools.cache
def _record_block() -> _RecordBlock:
    parts: list[bytes] = []
    ends: list[int] = []
    size = 0
    n = 1
    while True:
        encoded = encode_json(record(n))
        grown = size + (1 if parts else 0) + len(encoded)
        # Keep one byte spare so "," + block still fits in one chunk.
        if grown > CHUNK_BYTES - 1:
            break
        parts.append(encoded)
        ends.append(grown)
        size = grown
        n += 1
    return _RecordBlock(b",".join(parts), ends)


_BIG_META = b'"meta":{"total_pages":1,"next_cursor":null}'


@functools.cache
def _big_frame(cursor_last: bool, next_cursor: str | None = None) -> tuple[bytes, bytes]:
    """What comes before the first record and after the last one."""
    meta = _BIG_META if next_cursor is None else json.dumps(
        {"meta": {"total_pages": 1, "next_cursor": next_cursor}}, separators=(",", ":")
    ).encode()[1:-1]
    if cursor_last:
        return b'{"data":[', b"]," + meta + b"}"
    return b"{" + meta + b',"data":[', b"]}"


def big_body(target_bytes: int, cursor_last: bool = True, next_cursor: str | None = None) -> Body:
    """One valid JSON object of exactly ``target_bytes`` bytes (or the smallest possible, if fewer).

    Shape: ``{"data": [records...], "meta": {"total_pages": 1, "next_cursor": null}}``
    (``meta`` first when ``cursor_last`` is false). The records are the block's
    records 1..k repeated, so ids repeat every ~1 MiB; a final partial block of
    whole records and a run of insignificant whitespace before ``]`` make the
    length exact. Nothing but the last chunk is allocated per request.
    """
    block = _record_block()
    head, tail = _big_frame(cursor_last, next_cursor)
    budget = target_bytes - len(head) - len(tail)

    # Whole blocks: the first costs len(block.data), each further one a comma more.
    block_size = len(block.data)
    if budget < block_size:
        full_blocks = 0
        used = 0
    else:
        full_blocks = 1 + (budget - block_size) // (block_size + 1)
        used = block_size + (full_blocks - 1) * (block_size + 1)
    remaining = max(budget - used, 0)

    # Then as many whole records from the start of the block as still fit.
    separator = b"," if full_blocks else b""
    fitting = bisect.bisect_right(block.record_ends, remaining - len(separator))
    if fitting == 0:
        separator = b""
    partial = block.data[: block.record_ends[fitting - 1]] if fitting else b""
    spaces = b" " * max(remaining - len(separator) - len(partial), 0)

    length = len(head) + used + len(separator) + len(partial) + len(spaces) + len(tail)

    def iter_chunks() -> Iterator[bytes]:
        if full_blocks == 0:
            yield head + partial + spaces + tail
            return
        yield head
        yield block.data
        repeat = b"," + block.data
        for _ in range(full_blocks - 1):
            yield repeat
        yield separator + partial + spaces + tail

    return Body(length, JSON, iter_chunks)
