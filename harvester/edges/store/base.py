"""The store interface: the few operations a job's output needs.

A store holds a job's *files* (``_manifest.json``, ``_failed.jsonl``, ``_SUCCESS``,
the claim and the finalizer's plan), its *segments* (what workers write, under
``.segments/<job>/``) and its *parts* (what the finalizer seals). Every write of a
file or part is whole or absent: a reader never sees half of one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator, Protocol

from ...core.layout import Piece, SealedPart


class Segment(Protocol):
    """An append-only segment one worker thread writes (see :mod:`harvester.edges.storage`)."""

    size: int

    @property
    def unlinked(self) -> bool:
        """True when the segment takes no more pages (sealed by the finalizer, or, in
        an object store, uploaded or broken by a failed upload): the writer starts a
        new one."""

    @property
    def settled(self) -> bool:
        """True when no byte written to it waits for :meth:`sync`."""

    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Make every byte written so far durable (fsync, or the upload)."""

    def truncate(self, size: int) -> None: ...

    def close(self) -> None: ...


class Store(ABC):
    location: str  # an absolute directory or s3://bucket/prefix, as the ledger keeps it

    # ------------------------------------------------------------- claiming

    @abstractmethod
    def check_new(self, job_path: str | None = None) -> None:
        """Refuse (OutputDirError/JobSpecError) a location that holds anything, or
        cannot be written."""

    @abstractmethod
    def claim(self, job_id: str, job_path: str | None = None) -> None:
        """Check and claim the location for ``job_id`` (refused if another job has it)."""

    @abstractmethod
    def claimed_by(self) -> str | None:
        """The job that claimed the location, if any."""

    # ---------------------------------------------------------------- files

    @abstractmethod
    def read(self, name: str) -> bytes | None:
        """A file's bytes, or None when it is absent."""

    @abstractmethod
    def write(self, name: str, data: bytes) -> None:
        """Write a file whole (atomically: a reader sees the old one or the new one)."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove a file (absent is fine)."""

    def exists(self, name: str) -> bool:
        return self.read(name) is not None

    def flush(self) -> None:
        """Make the files' names durable (a directory fsync); nothing for S3."""

    # ------------------------------------------------------------- segments

    @abstractmethod
    def segment_writer(self, relative: str, *, fsync: bool) -> Segment:
        """A new segment at ``relative`` (under ``.segments/``) for one worker thread."""

    @abstractmethod
    def remove_segments(self, relatives: list[str]) -> None:
        """Drop sealed segments (absent ones are fine)."""

    @abstractmethod
    def remove_work(self, job_id: str) -> None:
        """Drop the job's segment area (what is left: plans, unreferenced segments)."""

    # ---------------------------------------------------------------- parts

    @abstractmethod
    def write_part(self, name: str, pieces: list[Piece]) -> SealedPart:
        """Copy ``pieces`` into part ``name``, whole or not at all; returns its digest."""

    @abstractmethod
    def stream(self, name: str) -> Iterator[bytes] | None:
        """A file or part's bytes in blocks (None when absent), for verify."""
