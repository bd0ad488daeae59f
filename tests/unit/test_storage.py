"""harvester.edges.storage: gzip members appended to segments, aborted pages cut off,
and parts sealed by copying committed members."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib

import pytest

from harvester.errors import StorageError
from harvester.edges.storage import Member, Piece, SegmentWriter, file_sha256, write_part


def write_page(segment: SegmentWriter, chunks: list[bytes], level: int = 6) -> Member:
    member = segment.begin_page(level)
    for chunk in chunks:
        member.write(chunk)
    return member.commit()


def test_member_round_trips(tmp_path):
    """One committed member is a gzip stream that decompresses to exactly the bytes written."""
    segment = SegmentWriter(tmp_path / "s.seg", fsync=False)
    data = [b'{"page":1,"body":', b'{"x": "' + b"a" * 5000 + b'"}', b"}\n"]
    member = write_page(segment, data)
    segment.close()
    raw = (tmp_path / "s.seg").read_bytes()
    assert member.offset == 0 and member.length == len(raw)
    assert member.raw_bytes == sum(map(len, data))
    assert gzip.decompress(raw) == b"".join(data)


def test_several_members_form_one_stream(tmp_path):
    """Concatenated members are one gzip stream holding every page in order."""
    path = tmp_path / "s.seg"
    segment = SegmentWriter(path, fsync=True)
    pages = [f'{{"page":{n}}}\n'.encode() * (n * 50) for n in range(1, 6)]
    members = [write_page(segment, [page[: len(page) // 2], page[len(page) // 2:]])
               for page in pages]
    segment.close()
    raw = path.read_bytes()
    assert gzip.decompress(raw) == b"".join(pages)
    # Each member is also a complete gzip stream on its own, at its recorded place.
    for member, page in zip(members, pages):
        assert gzip.decompress(raw[member.offset: member.offset + member.length]) == page
    assert members[-1].offset + members[-1].length == len(raw)
    assert [m.offset for m in members[1:]] == [m.offset + m.length for m in members[:-1]]


def test_empty_member(tmp_path):
    """A member with no data is still a valid, empty gzip stream."""
    segment = SegmentWriter(tmp_path / "s.seg", fsync=False)
    member = write_page(segment, [])
    segment.close()
    assert member.raw_bytes == 0
    assert gzip.decompress((tmp_path / "s.seg").read_bytes()) == b""


@pytest.mark.parametrize("level", [1, 9])
def test_members_are_deterministic(tmp_path, level):
    """The same input at the same level gives byte-identical members (mtime 0)."""
    segment = SegmentWriter(tmp_path / "s.seg", fsync=False)
    a = write_page(segment, [b"same page\n"], level)
    b = write_page(segment, [b"same page\n"], level)
    segment.close()
    raw = (tmp_path / "s.seg").read_bytes()
    assert raw[a.offset:a.offset + a.length] == raw[b.offset:b.offset + b.length]
    assert raw[4:8] == b"\0\0\0\0"


def test_an_aborted_page_after_unsynced_pages_keeps_theirs(tmp_path):
    """Pages of a run are committed without a sync (their bytes may still be in the
    write buffer); a page aborted after them drops only its own bytes, buffered or
    written, and the one sync after makes every earlier page readable at its place."""
    path = tmp_path / "s.seg"
    segment = SegmentWriter(path, fsync=True)
    kept = []
    for n in range(3):
        member = segment.begin_page(1)
        member.write(f"page {n}\n".encode() * 100)
        kept.append(member.commit(sync=False))
    doomed = segment.begin_page(1)
    doomed.write(b"x" * 100)
    doomed.abort()
    big = segment.begin_page(1)
    big.write(os.urandom(SegmentWriter.FLUSH_BYTES + 10))  # reaches the file, then aborted
    big.abort()
    last = segment.begin_page(1)
    last.write(b"after\n")
    kept.append(last.commit(sync=False))
    segment.sync()
    raw = path.read_bytes()
    assert len(raw) == kept[-1].offset + kept[-1].length
    for n, member in enumerate(kept[:3]):
        assert gzip.decompress(raw[member.offset:member.offset + member.length]) == \
            f"page {n}\n".encode() * 100
    assert gzip.decompress(raw) == b"".join(f"page {n}\n".encode() * 100
                                            for n in range(3)) + b"after\n"
    segment.close()


def test_abort_truncates_back(tmp_path):
    """abort() cuts the segment back so only committed members remain, and writing continues."""
    path = tmp_path / "s.seg"
    segment = SegmentWriter(path, fsync=False)
    first = write_page(segment, [b"page one\n"])
    doomed = segment.begin_page(6)
    doomed.write(os.urandom(200_000))  # enough to reach the file, not just the buffer
    segment.sync()
    assert path.stat().st_size > first.length
    doomed.abort()
    assert segment.size == first.length
    assert path.stat().st_size == first.length
    third = write_page(segment, [b"page three\n"])
    segment.close()
    assert third.offset == first.length
    assert gzip.decompress(path.read_bytes()) == b"page one\npage three\n"


def test_abort_of_buffered_data(tmp_path):
    """abort() also discards bytes still in the writer's buffer, never flushing them later."""
    path = tmp_path / "s.seg"
    segment = SegmentWriter(path, fsync=False)
    first = write_page(segment, [b"one\n"])
    doomed = segment.begin_page(6)
    doomed.write(b"half a page")  # stays in the 1 MiB buffer
    doomed.abort()
    last = write_page(segment, [b"two\n"])
    segment.close()
    assert last.offset == first.length
    assert gzip.decompress(path.read_bytes()) == b"one\ntwo\n"


def test_abort_after_commit_is_a_no_op(tmp_path):
    """abort() on a committed member does not remove it."""
    path = tmp_path / "s.seg"
    segment = SegmentWriter(path, fsync=False)
    member = segment.begin_page(6)
    member.write(b"kept\n")
    member.commit()
    member.abort()
    segment.close()
    assert gzip.decompress(path.read_bytes()) == b"kept\n"


def test_reopened_segment_appends(tmp_path):
    """A segment reopened by a new writer continues at its end."""
    path = tmp_path / "s.seg"
    first = SegmentWriter(path, fsync=False)
    a = write_page(first, [b"a\n"])
    first.close()
    second = SegmentWriter(path, fsync=False)
    assert second.size == a.length
    b = write_page(second, [b"b\n"])
    second.close()
    assert b.offset == a.length
    assert gzip.decompress(path.read_bytes()) == b"a\nb\n"


def test_segment_dir_is_created(tmp_path):
    """Missing parent directories of a segment are created."""
    path = tmp_path / ".segments" / "job" / "w.seg"
    segment = SegmentWriter(path, fsync=False)
    segment.close()
    assert path.parent.is_dir()


def test_segment_that_cannot_be_opened_is_a_storage_error(tmp_path):
    """A segment path that cannot be created raises StorageError naming it."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError) as info:
        SegmentWriter(blocker / "s.seg")
    assert str(blocker) in str(info.value)


def test_unlinked(tmp_path):
    """unlinked is False while the file exists and True once it is deleted."""
    path = tmp_path / "s.seg"
    segment = SegmentWriter(path, fsync=False)
    assert segment.unlinked is False
    path.unlink()
    assert segment.unlinked is True
    segment.close()


def test_write_part_copies_pieces(tmp_path):
    """write_part copies the pieces, in the given order, into a valid gzip part whose
    size and sha256 match file_sha256 and the returned SealedPart."""
    seg_a = SegmentWriter(tmp_path / ".segments" / "a.seg", fsync=False)
    seg_b = SegmentWriter(tmp_path / ".segments" / "b.seg", fsync=False)
    m1 = write_page(seg_a, [b'{"page":1}\n'])
    aborted = seg_a.begin_page(6)
    aborted.write(b"never committed")
    aborted.abort()
    m2 = write_page(seg_b, [b'{"page":2}\n'])
    m3 = write_page(seg_a, [b'{"page":3}\n'])
    write_page(seg_b, [b'{"page":99}\n'])  # committed but not in this part
    seg_a.close()
    seg_b.close()
    pieces = [Piece(".segments/a.seg", m1.offset, m1.length),
              Piece(".segments/b.seg", m2.offset, m2.length),
              Piece(".segments/a.seg", m3.offset, m3.length)]
    sealed = write_part(tmp_path, "part-00000.jsonl.gz", pieces)
    part = tmp_path / "part-00000.jsonl.gz"
    assert gzip.decompress(part.read_bytes()) == b'{"page":1}\n{"page":2}\n{"page":3}\n'
    assert file_sha256(part) == (sealed.compressed_bytes, sealed.sha256)
    assert sealed.compressed_bytes == m1.length + m2.length + m3.length
    assert sealed.sha256 == hashlib.sha256(part.read_bytes()).hexdigest()
    assert sealed.name == "part-00000.jsonl.gz"
    assert not (tmp_path / ".part-00000.jsonl.gz.tmp").exists()


def test_write_part_short_segment_raises(tmp_path):
    """A piece reaching past the segment's end raises StorageError and leaves no part."""
    seg = SegmentWriter(tmp_path / "a.seg", fsync=False)
    m = write_page(seg, [b"x\n"])
    seg.close()
    with pytest.raises(StorageError, match="ends before"):
        write_part(tmp_path, "part-00000.jsonl.gz", [Piece("a.seg", m.offset, m.length + 10)])
    assert not (tmp_path / "part-00000.jsonl.gz").exists()


def test_write_part_replaces_atomically(tmp_path):
    """Writing a part again replaces it whole (a resumed seal)."""
    seg = SegmentWriter(tmp_path / "a.seg", fsync=False)
    m = write_page(seg, [b"x\n"])
    seg.close()
    (tmp_path / "part-00000.jsonl.gz").write_bytes(b"stale garbage")
    sealed = write_part(tmp_path, "part-00000.jsonl.gz", [Piece("a.seg", m.offset, m.length)])
    assert gzip.decompress((tmp_path / "part-00000.jsonl.gz").read_bytes()) == b"x\n"
    assert sealed.compressed_bytes == m.length


def test_file_sha256(tmp_path):
    """file_sha256 returns size and hex sha256, across the 1 MiB block boundary."""
    path = tmp_path / "f"
    data = os.urandom((1 << 20) + 123)
    path.write_bytes(data)
    assert file_sha256(path) == (len(data), hashlib.sha256(data).hexdigest())


def test_crc_and_length_trailer(tmp_path):
    """The member trailer holds CRC32 and length of the raw bytes (what gzip checks)."""
    segment = SegmentWriter(tmp_path / "s.seg", fsync=False)
    data = b"hello world\n" * 10
    member = write_page(segment, [data[:7], data[7:]])
    segment.close()
    raw = (tmp_path / "s.seg").read_bytes()
    assert int.from_bytes(raw[-8:-4], "little") == zlib.crc32(data)
    assert int.from_bytes(raw[-4:], "little") == len(data) == member.raw_bytes


@pytest.mark.parametrize("level", range(1, 10))
def test_every_level_writes_a_standard_gzip_member(tmp_path, level):
    """Levels 1-2 deflate with ISA-L, 3-9 with zlib-ng; every level's member is a
    standard gzip stream that the stdlib reads back exactly, and level 1 (the
    default) compresses JSON records (to well under half here)."""
    from harvester.edges.storage import compressor

    engine = type(compressor(level)).__module__
    assert ("isal" in engine) == (level <= 2), engine
    segment = SegmentWriter(tmp_path / "s.seg", fsync=False)
    data = b"".join(b'{"id": %d, "name": "employee %d", "dept": "eng"}\n' % (i, i)
                    for i in range(5000))
    member = write_page(segment, [data[:70000], data[70000:]], level)
    segment.close()
    raw = (tmp_path / "s.seg").read_bytes()
    assert gzip.decompress(raw) == data
    assert member.length < len(data) / 2
