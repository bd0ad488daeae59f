"""The streaming byte scanner: records verbatim, values at paths, any chunking."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from harvester.errors import InvalidJSON
from harvester.core.scan import JsonScanner


def scan(body: bytes, chunk_sizes, *, records_path=None, value_paths=()):
    records: list[bytes] = []
    current: list[bytes] = []

    def on_record(piece: bytes, done: bool) -> None:
        current.append(piece)
        if done:
            records.append(b"".join(current))
            current.clear()

    scanner = JsonScanner(records_path=records_path, value_paths=value_paths, on_record=on_record)
    i = 0
    sizes = iter(chunk_sizes)
    while i < len(body):
        size = next(sizes, len(body))
        scanner.feed(body[i:i + size])
        i += size
    values = scanner.finish()
    return records, values, scanner


DOC = (b'{"meta": {"page": 1, "next_cursor": "c\\"2"},\n "included": [{"a": [[[[1]]]]}, "x]"],'
       b' "data": [ {"id": 1, "price": 1.50, "big": 1e400, "s": "a\\u00e9\\"}{[", "neg": -0},'
       b'\r\n {"id": 2, "deep": {"a": {"b": {"c": {"d": [1, {"e": "]"}]}}}}},'
       b' 3.0 , "plain", null, [1, [2, [3, [4]]]], {} ], "after": {"total": 12}}')
RECORDS = [b'{"id": 1, "price": 1.50, "big": 1e400, "s": "a\\u00e9\\"}{[", "neg": -0}',
           b'{"id": 2, "deep": {"a": {"b": {"c": {"d": [1, {"e": "]"}]}}}}}',
           b"3.0", b'"plain"', b"null", b"[1, [2, [3, [4]]]]", b"{}"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64, 10_000])
def test_records_are_emitted_verbatim_whatever_the_chunking(size):
    """Every element of the records array comes out byte for byte as sent (numbers like 1.50,
    1e400 and -0, escapes, brackets inside strings, deep nesting), for any chunk size."""
    records, values, scanner = scan(DOC, [size] * len(DOC), records_path="data",
                                    value_paths=["meta.next_cursor", "after.total"])
    assert records == RECORDS
    assert scanner.records == len(RECORDS)
    assert values == {"meta.next_cursor": 'c"2', "after.total": 12}


def test_random_chunkings_of_generated_documents():
    """Generated documents with records of every shape scan identically under random chunking."""
    rng = random.Random(7)

    def value(depth: int):
        kind = rng.randrange(6 if depth < 5 else 3)
        if kind == 0:
            return rng.choice([0, -1, 12345678901234567890, 1.5, -2.25e-8])
        if kind == 1:
            return rng.choice(["", "é", "q\"uote", "back\\slash", "]}{[", "\n"])
        if kind == 2:
            return rng.choice([True, False, None])
        if kind in (3, 4):
            return {f"k{i}": value(depth + 1) for i in range(rng.randrange(4))}
        return [value(depth + 1) for _ in range(rng.randrange(4))]

    for _ in range(200):
        items = [value(0) for _ in range(rng.randrange(6))]
        encoded = [json.dumps(item, indent=rng.choice([None, 1])).encode() for item in items]
        body = (b'{"skip": ' + json.dumps(value(0)).encode() + b', "data": [' +
                b", ".join(encoded) + b'], "meta": {"cursor": "end"}}')
        sizes = [rng.randrange(1, 40) for _ in range(len(body))]
        records, values, _ = scan(body, sizes, records_path="data", value_paths=["meta.cursor"])
        assert records == encoded
        assert values == {"meta.cursor": "end"}


def test_cursor_after_many_records_and_numbers_exact():
    """A value after the records array is found; non-integers come back as exact Decimals."""
    body = b'{"data": [' + b",".join(b'{"i": %d}' % i for i in range(5000)) + \
        b'], "meta": {"total": 3.0, "next": null}}'
    records, values, _ = scan(body, [4096] * 1000, records_path="data",
                              value_paths=["meta.total", "meta.next"])
    assert len(records) == 5000
    assert values == {"meta.total": Decimal("3.0"), "meta.next": None}


def test_absent_paths_and_missing_records_array():
    """Paths that are not in the body are absent from the result; no records array, no records."""
    records, values, scanner = scan(b'{"meta": {}}', [3] * 10, records_path="data",
                                    value_paths=["meta.cursor"])
    assert records == [] and values == {} and not scanner.records_array_seen


def test_top_level_array_of_records_with_empty_path():
    """records_path "" means the body itself is the array of records."""
    records, _, _ = scan(b'[{"a": 1}, 2]', [2] * 10, records_path="")
    assert records == [b'{"a": 1}', b"2"]


@pytest.mark.parametrize("body", [b'{"data": [1, 2', b"", b'{"a": "unterminated'])
def test_truncated_bodies_are_reported(body):
    """A body that ends inside a value raises InvalidJSON at finish."""
    with pytest.raises(InvalidJSON):
        scan(body, [4] * 20, records_path="data")


def _lines_of(body: bytes, chunk_sizes, records_path="data") -> tuple[bytes, int]:
    """What a scanner with ``on_lines`` (and ``on_record`` for the rest) writes."""
    out: list[bytes] = []

    def on_record(piece: bytes, done: bool) -> None:
        out.append(piece.replace(b"\r", b" ").replace(b"\n", b" ") + (b"\n" if done else b""))

    def on_lines(data: bytes, count: int) -> None:
        assert data.count(b"\n") == count and data.endswith(b"\n")
        out.append(data)

    scanner = JsonScanner(records_path=records_path, on_record=on_record, on_lines=on_lines)
    i = 0
    for size in chunk_sizes:
        if i >= len(body):
            break
        scanner.feed(body[i:i + size])
        i += size
    scanner.feed(body[i:])
    scanner.finish()
    return b"".join(out), scanner.records


def test_runs_of_records_go_out_in_one_call_as_lines():
    """Runs of numbers, literals, strings and shallow containers (raw newlines inside
    them too) come out through ``on_lines`` as the same lines that per-record emission
    gives, one record per line, whatever the chunking; the count is exact."""
    rng = random.Random(11)
    pool = [b"1", b"-2.5e3", b"true", b"null", b'"a,b"', b'"q\\"]"', b'{"x": [1,\n 2]}',
            b"[\r\n]", b'{"deep": {"a": {"b": {"c": {"d": 1}}}}}', b"0"]
    for _ in range(200):
        records = [rng.choice(pool) for _ in range(rng.randrange(1, 40))]
        body = b'{"data": [' + rng.choice([b",", b", ", b" ,\n"]).join(records) + b"]}"
        expected = b"".join(r.replace(b"\r", b" ").replace(b"\n", b" ") + b"\n" for r in records)
        sizes = [rng.randrange(1, 30) for _ in range(len(body))]
        assert _lines_of(body, sizes) == (expected, len(records))
        # In one chunk, whole runs of containers and strings go out in one call.
        assert _lines_of(body, [len(body)]) == (expected, len(records))


def test_a_million_tiny_records_cost_few_calls():
    """An array of 1,000,000 one-digit records is emitted in a handful of calls (one per
    chunk), not a million: the case that used to take an hour per GB."""
    calls = []
    scanner = JsonScanner(records_path="", on_lines=lambda data, count: calls.append(count))
    body = b"[" + b"7," * 999_999 + b"7]"
    for i in range(0, len(body), 1 << 20):
        scanner.feed(body[i:i + (1 << 20)])
    scanner.finish()
    assert scanner.records == 1_000_000 and sum(calls) >= 999_990 and len(calls) <= 3
