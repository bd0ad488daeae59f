"""Where a job's output lives: a local directory or a prefix of an S3-compatible
object store, behind one interface (:class:`~harvester.edges.store.base.Store`).

    store = open_store("s3://bucket/harvests/users")   # or "/data/users"
    store.write("_manifest.json", data)                # whole or not at all

Workers write segments through :meth:`Store.segment_writer`; the finalizer seals
them into parts with :meth:`Store.write_part`; ``harvest verify`` reads through
:meth:`Store.stream`. Only this package touches the output's disk or bucket.
"""

from __future__ import annotations

from ...core.layout import is_object_store
from .base import Store

__all__ = ["Store", "is_object_store", "open_store"]


def open_store(location: str) -> Store:
    """The store for an output location (``s3://bucket/prefix`` or a directory)."""
    if is_object_store(location):
        from .s3 import S3Store  # boto3 is imported only by jobs that write to S3

        return S3Store.from_url(location)
    from .local import LocalStore

    return LocalStore(location)
