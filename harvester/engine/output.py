"""Reading a sealed job's output: its parts in order, in constant memory.

Only what the manifest lists is read (never ``.segments``, which may hold pages
that were never committed). The parts of a job concatenated are one valid gzip
stream, so :meth:`SealedOutput.compressed` can be passed through untouched (the
service sends it as ``Content-Encoding: gzip``); everything else decompresses
in chunks of at most :data:`CHUNK` bytes, whatever a page compresses to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import ijson
from isal import isal_zlib

from ..core.manifest import FAILED, is_safe_part_name
from ..core.scan import split_path
from ..edges.store import Store, open_store
from ..errors import OutputDirError, OutputError, StorageError
from .finalizer import read_manifest

CHUNK = 1 << 20


class SealedOutput:
    """The sealed parts of one output dir (local or ``s3://``), as its manifest lists."""

    def __init__(self, store: Store, manifest: dict[str, Any]):
        self.store = store
        self.manifest = manifest

    @classmethod
    def open(cls, location: str) -> "SealedOutput":
        store = open_store(location)
        manifest = read_manifest(store)
        if manifest is None:
            raise OutputDirError("has no _manifest.json: not the output of a finished harvest",
                                 path=store.location)
        return cls(store, manifest)

    @property
    def job_id(self) -> str:
        return self.manifest.get("job_id", "")

    @property
    def mode(self) -> str:
        return self.manifest["job"]["output"]["mode"]

    @property
    def records_path(self) -> str | None:
        job = self.manifest["job"]
        path = job["output"].get("records_path")
        return path if path is not None else job["pagination"].get("records_path")

    @property
    def compressed_bytes(self) -> int:
        return int(self.manifest["compressed_bytes"])

    @property
    def raw_bytes(self) -> int:
        return int(self.manifest["raw_bytes"])

    def compressed(self) -> Iterator[bytes]:
        """Every part's bytes in order: one gzip stream of JSON Lines."""
        for shard in self.manifest["shards"]:
            name = shard["name"]
            blocks = self.store.stream(name) if is_safe_part_name(name) else None
            if blocks is None:
                raise StorageError(f"{name} is listed in the manifest but missing",
                                   path=self.store.location, retryable=False)
            yield from blocks

    def decompressed(self) -> Iterator[bytes]:
        """The JSON Lines the parts hold, in chunks of at most :data:`CHUNK` bytes."""
        return gunzip(self.compressed())

    def lines(self) -> Iterator[bytes]:
        """Each line (without its newline). A line is a record or a whole page: it is
        held in memory, so for pages larger than memory use :meth:`records`."""
        pending = b""
        for chunk in self.decompressed():
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                yield pending + chunk[start:end] if pending else chunk[start:end]
                pending = b""
                start = end + 1
            pending += chunk[start:]
        if pending:
            raise StorageError("the last part ends mid-line: it is cut short",
                               path=self.store.location, retryable=False)

    def pages(self) -> Iterator[dict[str, Any]]:
        """Each page (``{"page", "url", "status", "fetched_at", "body"}``), one at a time.
        Refused at once (not at the first page) for a records-mode output."""
        if self.mode != "pages":
            raise OutputError(f"job {self.job_id} was harvested in records mode: its output"
                              " keeps records, not pages", job_id=self.job_id)
        return (json.loads(line) for line in self.lines())

    def records(self) -> Iterator[Any]:
        """Each record, in page order. In pages mode they are read out of each page's
        body at the job's ``records_path`` by an incremental parser, so a page of any
        size costs the memory of one record. Refused at once where there is no
        ``records_path`` to read them at."""
        if self.mode == "records":
            return (json.loads(line) for line in self.lines())
        path = self.records_path
        if path is None:
            raise OutputError(f"job {self.job_id} names no records_path: its pages cannot be"
                              " split into records (read them with pages())",
                              job_id=self.job_id)
        prefix = ".".join(("body", *split_path(path), "item"))
        return ijson.items(_Reader(self.decompressed()), prefix, multiple_values=True,
                           use_float=True)

    def failed(self) -> Iterator[dict[str, Any]]:
        """The ``_failed.jsonl`` records: one per page that failed for good."""
        data = self.store.read(FAILED) or b""
        for line in data.splitlines():
            if line.strip():
                yield json.loads(line)


def gunzip(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream of one or more members, at most :data:`CHUNK` bytes out
    at a time (a page that compresses 1000:1 never inflates into memory at once).
    Damage (not gzip, a member cut short) is a :class:`StorageError`."""
    decompressor = isal_zlib.decompressobj(31)
    in_member = False
    try:
        for block in blocks:
            data = block
            while data:
                in_member = True
                out = decompressor.decompress(data, CHUNK)
                if out:
                    yield out
                if decompressor.eof:
                    # A new gzip member follows the one just finished.
                    data = decompressor.unused_data
                    decompressor = isal_zlib.decompressobj(31)
                    in_member = False
                else:
                    data = decompressor.unconsumed_tail
    except isal_zlib.error as exc:
        raise StorageError(f"not a valid gzip stream: {exc}", retryable=False) from None
    if in_member:
        raise StorageError("gzip stream ends mid-member: the part is cut short",
                           retryable=False)


class _Reader:
    """A file-like ``read`` over an iterator of chunks, for ijson (which reads 64 KiB at
    a time: a 1 MiB chunk is sliced, not copied once per read)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._chunk = memoryview(b"")

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            rest = bytes(self._chunk) + b"".join(self._chunks)
            self._chunk = memoryview(b"")
            return rest
        while not self._chunk:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._chunk = memoryview(chunk)
        out, self._chunk = self._chunk[:size], self._chunk[size:]
        return bytes(out)
