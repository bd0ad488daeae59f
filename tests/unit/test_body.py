"""harvester.core.body.BodyInspector: streamed validation of a response body, and the
few scalar values pagination reads from it."""

from __future__ import annotations

import pytest

from harvester.core.body import BodyInspector
from harvester.errors import BodyError, InvalidJSON

DOC = ('{"meta": {"total_pages": 12, "next_cursor": "c\\u00e9-2", "none": null,'
       ' "flag": true}, "data": [{"id": 1, "name": "\u00e9t\u00e9 \u2603"}, {"id": 2}],'
       ' "count": 34}').encode()


def inspect(chunks, paths=()):
    """Feed every chunk and return finish()'s values."""
    inspector = BodyInspector(paths)
    for chunk in chunks:
        inspector.feed(chunk)
    return inspector.finish()


def test_whole_document_is_valid():
    """A complete JSON document in one chunk passes; with no paths the result is empty."""
    assert inspect([DOC]) == {}


@pytest.mark.parametrize("paths", [(), ("meta.total_pages",)], ids=["no-paths", "paths"])
def test_every_two_chunk_split(paths):
    """Split at every byte boundary (including inside UTF-8 sequences) the body still passes."""
    for cut in range(len(DOC) + 1):
        values = inspect([DOC[:cut], DOC[cut:]], paths)
        if paths:
            assert values == {"meta.total_pages": 12}, cut


@pytest.mark.parametrize("paths", [(), ("meta.next_cursor", "count")], ids=["no-paths", "paths"])
def test_one_byte_chunks(paths):
    """Fed one byte at a time the body passes and the values are the same as in one chunk."""
    assert inspect([DOC[i:i + 1] for i in range(len(DOC))], paths) == inspect([DOC], paths)


def test_empty_chunks_are_ignored():
    """Empty chunks in the stream change nothing."""
    assert inspect([b"", DOC[:10], b"", DOC[10:], b""], ["count"]) == {"count": 34}


def test_paths_extracted():
    """Nested scalar values at the wanted dotted paths are returned with their JSON types."""
    values = inspect([DOC], ["meta.total_pages", "meta.next_cursor", "meta.none", "meta.flag",
                             "count"])
    assert values == {"meta.total_pages": 12, "meta.next_cursor": "c\u00e9-2", "meta.none": None,
                      "meta.flag": True, "count": 34}
    assert type(values["meta.total_pages"]) is int


def test_absent_path_is_absent():
    """A path the body does not have is missing from the result (not None)."""
    values = inspect([DOC], ["meta.total_pages", "meta.missing", "nope.deeper"])
    assert values == {"meta.total_pages": 12}


def test_non_scalar_path_is_absent():
    """A path whose value is an object or array yields nothing."""
    assert inspect([DOC], ["meta", "data"]) == {}


def test_first_value_wins():
    """When a path occurs more than once (array items), the first scalar is kept."""
    assert inspect([b'{"data": [{"id": 1}, {"id": 2}]}'], ["data.item.id"]) == {"data.item.id": 1}


@pytest.mark.parametrize("body", [
    b"1", b"null", b'"text"', b"[]", b"{}", b'{"a":1}\n', b'  {"a": [1, 2.5, -3e2]}  \r\n',
])
def test_other_valid_documents(body):
    """Any complete JSON value, with surrounding whitespace, is valid."""
    assert inspect([body]) == {}


INVALID_ON_FEED = [
    pytest.param(b"<!DOCTYPE html><html><body>Service Unavailable</body></html>", id="html"),
    pytest.param(b"<html><head><title>502</title></head></html>", id="html-bare"),
    pytest.param(b'{"a":1} trailing', id="trailing-garbage"),
    pytest.param(b'{"a":1}{"b":2}', id="two-documents"),
    pytest.param(b'{"a":1,}', id="trailing-comma"),
    pytest.param(b"{'a': 1}", id="single-quotes"),
    pytest.param(b'{"a": NaN}', id="nan"),
    pytest.param(b'{"a": "\xff"}', id="invalid-utf8"),
    pytest.param(b"\xef\xbb\xbf{}", id="bom"),
]


@pytest.mark.parametrize("body", INVALID_ON_FEED)
def test_invalid_json_raises(body):
    """Invalid JSON raises InvalidJSON (a retryable BodyError) by finish at the latest."""
    with pytest.raises(InvalidJSON) as info:
        inspect([body])
    assert isinstance(info.value, BodyError) and info.value.retryable
    assert "not" in str(info.value) and "JSON" in str(info.value)


@pytest.mark.parametrize("body", INVALID_ON_FEED)
def test_invalid_json_raises_with_paths_too(body):
    """The path-reading parser rejects the same bodies."""
    with pytest.raises(InvalidJSON):
        inspect([body], ["a"])


@pytest.mark.parametrize("body", [
    pytest.param(DOC[:-1], id="missing-close"),
    pytest.param(DOC[: len(DOC) // 2], id="half"),
    pytest.param(b'{"a": "unterminated', id="in-string"),
    pytest.param(b"[1, 2", id="array"),
    pytest.param(b"   ", id="whitespace-only"),
])
@pytest.mark.parametrize("paths", [(), ("meta.total_pages",)], ids=["no-paths", "paths"])
def test_truncated_json_raises_on_finish(body, paths):
    """A body cut short is accepted chunk by chunk but finish() raises InvalidJSON."""
    inspector = BodyInspector(paths)
    inspector.feed(body)
    with pytest.raises(InvalidJSON, match="not complete"):
        inspector.finish()


@pytest.mark.parametrize("chunks", [[], [b""], [b"", b""]])
def test_empty_body_raises(chunks):
    """A body with no bytes at all is not JSON."""
    with pytest.raises(InvalidJSON, match="empty"):
        inspect(chunks)


def test_error_message_is_one_line():
    """The message (which lands in _failed.jsonl) is a single line."""
    with pytest.raises(InvalidJSON) as info:
        inspect([b"<html>\n<body>oops</body>\n</html>"])
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------- TokenGuard

def _guard_feeds(body: bytes, size: int, limit: int) -> None:
    from harvester.core.body import TokenGuard

    guard = TokenGuard(limit)
    for i in range(0, len(body), size):
        guard.feed(body[i:i + size])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 99])
@pytest.mark.parametrize("body", [
    b'{"' + b"k" * 101 + b'": 1}',
    b'["' + b"s" * 101 + b'"]',
    b'["' + b'\\"' * 51 + b'"]',
    b'["' + b"\\\\" * 51 + b'"]',
    b'[' + b"1" * 101 + b']',
    b'[-1.' + b"5" * 99 + b'e10]',
], ids=["key", "string", "escaped-quotes", "escaped-backslashes", "integer", "decimal"])
def test_a_token_over_the_limit_fails_at_any_chunking(body, size):
    """A key, string or number over the limit fails the page (PageTooLarge, not retried)
    wherever the chunks split it, escaped quotes and backslashes included: an attacker's
    string of ``\\"`` cannot hide its length behind quote characters. (A token inside
    one chunk is bounded by the chunk: chunks are 1 MiB, the limit 8 MiB.)"""
    from harvester.errors import PageTooLarge

    with pytest.raises(PageTooLarge, match="over"):
        _guard_feeds(body, size, limit=100)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_many_tokens_under_the_limit_pass_at_any_chunking(size):
    """A long document of many strings, escapes, keys and numbers each under the limit passes,
    however it is chunked: only one token's own length counts, never the document's."""
    record = b'{"name": "a\\\\\\"b\\\\", "n": 12345678, "s": "' + b"x" * 90 + b'"},'
    body = b"[" + record * 200 + b"1" * 99 + b"]"
    _guard_feeds(body, size, limit=100)


def test_the_inspector_bounds_a_huge_key_in_constant_memory():
    """With ijson (no C validator), BodyInspector fails a body whose key runs past
    MAX_TOKEN_BYTES before yajl has buffered more than that (fed 1 MiB at a time)."""
    from harvester.core.body import MAX_TOKEN_BYTES
    from harvester.errors import PageTooLarge

    inspector = BodyInspector(native=False)
    inspector.feed(b'{"')
    chunk = b"k" * (1 << 20)
    fed = 0
    with pytest.raises(PageTooLarge):
        while fed <= 2 * MAX_TOKEN_BYTES:
            inspector.feed(chunk)
            fed += len(chunk)
    assert fed <= MAX_TOKEN_BYTES + len(chunk)


def test_the_c_validator_takes_a_huge_key_and_both_validators_agree():
    """The C validator holds no token: a 64 MiB key passes, in constant memory (the
    traced peak stays under 1 MiB). On bodies both accept or both refuse, the C
    validator and ijson give the same verdict."""
    import tracemalloc

    from harvester.core.body import NATIVE

    if not NATIVE:
        pytest.skip("built without the C validator")
    inspector = BodyInspector()
    chunk = b"k" * (1 << 20)
    tracemalloc.start()
    inspector.feed(b'{"')
    for _ in range(64):
        inspector.feed(chunk)
    inspector.feed(b'": 1}')
    inspector.finish()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    for body in (b'{"a": [1, 2.5, "x"]}', b'[1, 2', b'{"a" 1}', b'"\xff"', b"[]  ", b"nul"):
        verdicts = []
        for native in (True, False):
            checker = BodyInspector(native=native)
            try:
                checker.feed(body)
                checker.finish()
                verdicts.append(True)
            except InvalidJSON:
                verdicts.append(False)
        assert verdicts[0] == verdicts[1], body
