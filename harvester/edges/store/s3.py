"""A job's output under a prefix of an S3-compatible object store (AWS S3, MinIO,
Ceph, moto...), through boto3.

Credentials and endpoint come from the standard AWS environment, never from the
job file: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (or any source of
boto3's credential chain), ``AWS_ENDPOINT_URL`` for a store other than AWS.

A worker thread's segment is spooled in an unlinked local file and uploaded as one
object when its pages are committed (:class:`ObjectSegment`): a page is committed
only once the store has acknowledged its bytes, so a host that vanishes loses
nothing committed. Each upload seals its object; the next pages go to a new one.
A page larger than the spool bound streams up as a multipart upload, so the spool
stays under ``2 x PART_BYTES`` whatever the page size.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

from ...core.layout import CLAIM_FILE, SEGMENTS_DIR, Piece, SealedPart, split_s3_url
from ...errors import JobSpecError, OutputDirError, StorageError
from ..outdir import MANIFEST
from ..storage import PageMember
from .base import Store

# Multipart part size: S3 wants >= 5 MiB for every part but the last.
PART_BYTES = 8 << 20
# How long a write waits for the store to come back (503s, a restart) before the
# page gives up: pages wait through an outage instead of failing for good.
WAIT_SECONDS = float(os.environ.get("HARVEST_STORE_WAIT_SECONDS", "120"))
_RETRYABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "RequestTimeTooSkewed", "503", "500", "502", "504", "Throttling"}

_RAISE = object()  # S3Store.call: an absent key is an error
_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def _client() -> Any:
    """One boto3 client per process (clients are thread-safe; sessions are not)."""
    with _clients_lock:
        found = _clients.get("s3")
        if found is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 5},
                            connect_timeout=5, read_timeout=60, max_pool_connections=64)
            found = _clients["s3"] = boto3.session.Session().client("s3", config=config)
        return found


def _storage_error(exc: Exception, where: str) -> StorageError:
    """botocore's errors, as ours at the boundary (retryable unless the store refused)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        retryable = code in _RETRYABLE_CODES or (status or 0) >= 500
        return StorageError(f"the object store answered {code or status}:"
                            f" {error.get('Message', '')}".rstrip(": "), path=where,
                            retryable=retryable)
    return StorageError(f"the object store is unreachable: {exc}", path=where, retryable=True)


def _boto_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def _not_found(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in (
        "NoSuchKey", "404", "NotFound")


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.location = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_url(cls, url: str) -> "S3Store":
        return cls(*split_s3_url(url))

    # -------------------------------------------------------------- helpers

    def key(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/") or not name:
            raise StorageError(f"refusing name {name!r}: it would leave the output prefix",
                               path=self.location)
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def call(self, what: str, fn: Callable[[], Any], *, wait: bool = True,
             missing: Any = _RAISE) -> Any:
        """Call the store, waiting out an outage (503s, a restart) for up to
        ``WAIT_SECONDS`` on retryable errors; botocore retries each call first.
        An absent key returns ``missing`` when given; every other error of botocore's
        becomes a StorageError here."""
        deadline = time.monotonic() + (WAIT_SECONDS if wait else 0)
        delay = 0.2
        while True:
            try:
                return fn()
            except _boto_errors() as exc:
                if missing is not _RAISE and _not_found(exc):
                    return missing
                error = _storage_error(exc, what)
                if not error.retryable or time.monotonic() + delay > deadline:
                    raise error from None
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------- claiming

    def check_new(self, job_path: str | None = None) -> None:
        client = _client()
        try:
            listing = self.call(self.location, lambda: client.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "",
                MaxKeys=6), wait=False)
        except StorageError as exc:
            raise JobSpecError(f"output dir {self.location} cannot be listed: {exc}"
                               " (is the bucket there, and are AWS_ACCESS_KEY_ID,"
                               " AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL set?)",
                               path=job_path, key="output.dir") from None
        names = sorted(item["Key"][len(self.prefix) + 1 if self.prefix else 0:]
                       for item in listing.get("Contents", []))
        if not names:
            return
        if CLAIM_FILE in names:
            owner = (self.read(CLAIM_FILE) or b"?").decode(errors="replace").strip()[:200]
            raise OutputDirError(f"is in use by job {owner}; choose another output.dir, or"
                                 f" remove {CLAIM_FILE} if that job is gone",
                                 path=self.location)
        if MANIFEST in names:
            raise OutputDirError("already holds the output of another job; choose another"
                                 " output.dir or remove it", path=self.location)
        shown = ", ".join(names[:5]) + (" and more" if len(names) > 5 else "")
        raise OutputDirError(f"is not empty ({shown}); a harvest writes into an empty or new"
                             " prefix only, so nothing of yours is overwritten",
                             path=self.location)

    def claim(self, job_id: str, job_path: str | None = None) -> None:
        self.check_new(job_path)
        client = _client()
        key = self.key(CLAIM_FILE)
        try:
            # A conditional create: two jobs starting at once cannot both claim it.
            self.call(self.location, lambda: client.put_object(
                Bucket=self.bucket, Key=key, Body=(job_id + "\n").encode(), IfNoneMatch="*"),
                wait=False)
        except StorageError as exc:
            if "PreconditionFailed" in str(exc):
                raise OutputDirError(f"was claimed by another job just now ({exc})",
                                     path=self.location) from None
            raise

    def claimed_by(self) -> str | None:
        data = self.read(CLAIM_FILE)
        return data.decode(errors="replace").strip() if data is not None else None

    # ---------------------------------------------------------------- files

    def read(self, name: str) -> bytes | None:
        client, key = _client(), self.key(name)
        return self.call(self.url(name), lambda: client.get_object(
            Bucket=self.bucket, Key=key)["Body"].read(), missing=None)

    def write(self, name: str, data: bytes) -> None:
        client, key = _client(), self.key(name)
        self.call(self.url(name), lambda: client.put_object(Bucket=self.bucket, Key=key,
                                                            Body=data))

    def delete(self, name: str) -> None:
        client, key = _client(), self.key(name)
        self.call(self.url(name), lambda: client.delete_object(Bucket=self.bucket, Key=key))

    def exists(self, name: str) -> bool:
        client, key = _client(), self.key(name)
        return self.call(self.url(name), lambda: client.head_object(
            Bucket=self.bucket, Key=key) is not None, missing=False)

    # ------------------------------------------------------------- segments

    def segment_writer(self, relative: str, *, fsync: bool) -> "ObjectSegment":
        return ObjectSegment(self, relative)

    def remove_segments(self, relatives: list[str]) -> None:
        self._delete_keys(sorted({self.key(relative) for relative in relatives}))

    def remove_work(self, job_id: str) -> None:
        client = _client()
        area = self.key(f"{SEGMENTS_DIR}/{job_id}/")
        self._delete_keys([item["Key"] for page in client.get_paginator(
            "list_objects_v2").paginate(Bucket=self.bucket, Prefix=area)
            for item in page.get("Contents", [])])

    def _delete_keys(self, keys: list[str]) -> None:
        client = _client()
        for first in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[first:first + 1000]]
            self.call(self.location, lambda: client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}))

    # ---------------------------------------------------------------- parts

    def write_part(self, name: str, pieces: list[Piece]) -> SealedPart:
        digest = hashlib.sha256()
        upload = Multipart(self, name)
        total = 0
        try:
            for block in self._read_pieces(pieces):
                digest.update(block)
                total += len(block)
                upload.add(block)
            upload.finish()
        except BaseException:
            upload.abort()
            raise
        return SealedPart(name=name, compressed_bytes=total, sha256=digest.hexdigest())

    def _read_pieces(self, pieces: list[Piece]) -> Iterator[bytes]:
        """The pieces' bytes, in order: adjacent pieces of one segment (a run's pages)
        come in one ranged GET of up to PART_BYTES."""
        client = _client()
        index = 0
        while index < len(pieces):
            first = pieces[index]
            end = first.offset + first.length
            index += 1
            while index < len(pieces) and pieces[index].segment == first.segment \
                    and pieces[index].offset == end and end - first.offset < PART_BYTES:
                end += pieces[index].length
                index += 1
            key = self.key(first.segment)
            span = f"bytes={first.offset}-{end - 1}"
            body = self.call(self.url(first.segment), lambda: client.get_object(
                Bucket=self.bucket, Key=key, Range=span)["Body"])
            received = 0
            for block in _chunks(body, self.url(first.segment)):
                received += len(block)
                yield block
            if received != end - first.offset:
                raise StorageError(f"segment ends before byte {end}", path=first.segment)

    def stream(self, name: str) -> Iterator[bytes] | None:
        client, key = _client(), self.key(name)
        body = self.call(self.url(name), lambda: client.get_object(
            Bucket=self.bucket, Key=key)["Body"], missing=None)
        return None if body is None else _chunks(body, self.url(name))


def _chunks(body: Any, where: str) -> Iterator[bytes]:
    """A GET's body in 1 MiB blocks; a connection lost mid-body becomes a StorageError."""
    try:
        yield from body.iter_chunks(1 << 20)
    except _boto_errors() as exc:
        raise _storage_error(exc, where) from None


class Multipart:
    """An object written in order, whole or not at all: one PUT when it is small,
    else a multipart upload of PART_BYTES parts (completed last, aborted on error)."""

    def __init__(self, store: S3Store, name: str):
        self.store = store
        self.name = name
        self.key = store.key(name)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def add(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= PART_BYTES:
            self._send_part(bytes(self._buffer[:PART_BYTES]))
            del self._buffer[:PART_BYTES]

    def _send_part(self, data: bytes) -> None:
        client, store = _client(), self.store
        if self._upload_id is None:
            self._upload_id = store.call(store.url(self.name), lambda: client.create_multipart_upload(
                Bucket=store.bucket, Key=self.key)["UploadId"])
        number = len(self._parts) + 1
        etag = store.call(store.url(self.name), lambda: client.upload_part(
            Bucket=store.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
            Body=data)["ETag"])
        self._parts.append({"PartNumber": number, "ETag": etag})

    def finish(self) -> None:
        client, store = _client(), self.store
        if self._upload_id is None:
            data = bytes(self._buffer)
            store.call(store.url(self.name), lambda: client.put_object(
                Bucket=store.bucket, Key=self.key, Body=data))
        else:
            if self._buffer or not self._parts:
                self._send_part(bytes(self._buffer))
            store.call(store.url(self.name), lambda: client.complete_multipart_upload(
                Bucket=store.bucket, Key=self.key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts}))
            self._upload_id = None
        self._buffer = bytearray()

    def abort(self) -> None:
        if self._upload_id is not None:
            try:
                _client().abort_multipart_upload(Bucket=self.store.bucket, Key=self.key,
                                                 UploadId=self._upload_id)
            except _boto_errors():
                pass  # the bucket's lifecycle rule for incomplete uploads collects it
            self._upload_id = None


class ObjectSegment:
    """A worker thread's segment in the object store: pages are spooled in an unlinked
    local file and the object is uploaded by :meth:`sync` (the commit point), which
    seals it (``unlinked`` turns True, so the next pages start a new object).

    Offsets are the object's; a page aborted while its bytes are still in the spool
    is cut off, one whose bytes were already shipped as a multipart part stays as
    bytes no commit references (sealing never copies them)."""

    def __init__(self, store: S3Store, relative: str):
        self.store = store
        self.relative = relative
        self.size = 0
        self._shipped = 0  # bytes already uploaded as multipart parts
        self._upload = Multipart(store, relative)
        self._sealed = False
        # A failed upload leaves the object unusable: its pages are never committed
        # (sync() raises), and the writer moves on to a new segment.
        self._broken: StorageError | None = None
        spool = os.environ.get("HARVEST_SPOOL_DIR") or None
        if spool:
            os.makedirs(spool, exist_ok=True)
        try:
            self._spool = tempfile.TemporaryFile(dir=spool, prefix="harvest-spool-")
        except OSError as exc:
            raise StorageError(f"cannot open a spool file: {exc.strerror or exc}",
                               path=spool or tempfile.gettempdir()) from None

    @property
    def unlinked(self) -> bool:
        return self._sealed or self._broken is not None

    @property
    def settled(self) -> bool:
        return self._sealed or (self._broken is None and self.size == 0)

    def begin_page(self, level: int) -> PageMember:
        return PageMember(self, level)

    def write(self, data: bytes) -> None:
        try:
            self._spool.write(data)
        except OSError as exc:
            raise StorageError(f"cannot spool: {exc.strerror or exc}",
                               path=self.store.url(self.relative)) from None
        self.size += len(data)
        if self.size - self._shipped >= 2 * PART_BYTES:
            self._ship(PART_BYTES)

    def _ship(self, count: int) -> None:
        """Upload the spool's first ``count`` bytes as a part; keep the rest spooled."""
        if self._broken is not None:
            raise self._broken
        try:
            self._ship_part(count)
        except StorageError as exc:
            self._break(exc)
            raise

    def _break(self, exc: StorageError) -> None:
        self._broken = exc
        self._upload.abort()

    def _ship_part(self, count: int) -> None:
        self._spool.flush()
        self._spool.seek(0)
        head = self._spool.read(count)
        rest = self._spool.read()
        self._upload.add(head)
        self._spool.seek(0)
        self._spool.truncate()
        self._spool.write(rest)
        self._shipped += len(head)

    def sync(self) -> None:
        """Upload what is spooled and complete the object: once this returns, every
        page written to it is durable in the store."""
        if self._broken is not None:
            raise StorageError(f"its pages were lost with a failed upload ({self._broken})",
                               path=self.store.url(self.relative))
        if self._sealed or self.size == 0:
            return
        try:
            self._spool.flush()
            self._spool.seek(0)
            while block := self._spool.read(PART_BYTES):
                self._upload.add(block)
            self._upload.finish()
        except StorageError as exc:
            self._break(exc)
            raise
        except OSError as exc:
            error = StorageError(f"cannot read the spool: {exc.strerror or exc}",
                                 path=self.store.url(self.relative))
            self._break(error)
            raise error from None
        self._sealed = True
        self._spool.seek(0)
        self._spool.truncate()

    def truncate(self, size: int) -> None:
        if self._sealed or self._broken is not None:
            return  # uploaded (the bytes stay, referenced by no commit) or lost
        keep = max(size, self._shipped)
        self._spool.flush()
        self._spool.truncate(keep - self._shipped)
        self._spool.seek(0, os.SEEK_END)
        self.size = keep

    def close(self) -> None:
        # Unsynced bytes belong to no committed page: nothing to upload.
        self._upload.abort()
        self._spool.close()
