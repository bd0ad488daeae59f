"""harvester.edges.store.s3.ObjectSegment with a stand-in S3 client (no sockets): a segment
is uploaded whole by sync(), the commit point; an upload that fails leaves the segment
broken, so its pages can never be committed from it, and the writer moves on."""

from __future__ import annotations

import gzip

import pytest
from botocore.exceptions import ClientError

from harvester.errors import StorageError
from harvester.edges.store import s3


class FakeClient:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.failing = False

    def _maybe_fail(self, operation: str) -> None:
        if self.failing:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "reduce your rate"},
                               "ResponseMetadata": {"HTTPStatusCode": 503}}, operation)

    def put_object(self, Bucket: str, Key: str, Body: bytes, **_: object) -> dict:
        self._maybe_fail("PutObject")
        self.objects[Key] = bytes(Body)
        return {}


@pytest.fixture
def client(monkeypatch):
    fake = FakeClient()
    monkeypatch.setattr(s3, "_client", lambda: fake)
    monkeypatch.setattr(s3, "WAIT_SECONDS", 0.0)  # fail at once instead of waiting
    return fake


def _page(segment: s3.ObjectSegment, text: bytes):
    member = segment.begin_page(1)
    member.write(text)
    return member.commit(sync=False)


def test_pages_are_uploaded_by_sync_and_the_object_is_sealed(client, tmp_path, monkeypatch):
    """Two pages spooled, then one sync: one object holding both members at their
    offsets; the segment is sealed (the writer starts a new one) and settled."""
    monkeypatch.setenv("HARVEST_SPOOL_DIR", str(tmp_path))
    store = s3.S3Store("bucket", "jobs/x")
    segment = store.segment_writer(".segments/j/w-1.seg", fsync=True)
    first, second = _page(segment, b"one\n"), _page(segment, b"two\n")
    assert not client.objects and not segment.settled
    segment.sync()
    data = client.objects["jobs/x/.segments/j/w-1.seg"]
    assert gzip.decompress(data[first.offset:first.offset + first.length]) == b"one\n"
    assert gzip.decompress(data[second.offset:second.offset + second.length]) == b"two\n"
    assert segment.unlinked and segment.settled


def test_a_failed_upload_breaks_the_segment(client, tmp_path, monkeypatch):
    """The store refuses the upload: sync raises StorageError (retryable), and keeps
    raising; the segment is unlinked (the writer moves on) but not settled (its pages
    are lost), and nothing half-written is in the store."""
    monkeypatch.setenv("HARVEST_SPOOL_DIR", str(tmp_path))
    store = s3.S3Store("bucket", "jobs/x")
    segment = store.segment_writer(".segments/j/w-2.seg", fsync=True)
    _page(segment, b"lost\n")
    client.failing = True
    with pytest.raises(StorageError) as raised:
        segment.sync()
    assert raised.value.retryable
    client.failing = False
    with pytest.raises(StorageError):
        segment.sync()
    assert segment.unlinked and not segment.settled
    assert client.objects == {}
    segment.close()
