"""harvester.core._jsoncheck, the C validator: it accepts exactly what a strict parser
accepts (RFC 8259, strict UTF-8), wherever the chunks split the body."""

from __future__ import annotations

import json
import random

import pytest

jsoncheck = pytest.importorskip("harvester.core._jsoncheck")


def _strictly_valid(data: bytes) -> bool:
    """The reference: strict UTF-8, then json.loads without NaN/Infinity."""
    def reject(constant: str):
        raise ValueError(constant)

    try:
        json.loads(data.decode("utf-8"), parse_constant=reject)
    except (ValueError, RecursionError):
        return False
    return True


def _verdict(data: bytes, sizes: list[int]) -> bool:
    validator = jsoncheck.Validator()
    i = 0
    try:
        for size in sizes:
            validator.feed(data[i:i + size])
            i += size
        validator.feed(data[i:])
        validator.finish()
    except jsoncheck.JsonError:
        return False
    return True


CASES = [
    b'{}', b'[]', b'0', b'-0', b'1.5e-3', b'"x"', b'true', b'null', b' [1, 2] \n',
    b'{"a": {"b": [1, {"c": null}]}, "d": "\\u00e9\\n"}', '"é€𝄞"'.encode(),
    b'', b' ', b'{', b'[1,]', b'{"a":1,}', b'01', b'1.', b'.5', b'1e', b'1e+', b'-',
    b'+1', b'NaN', b'Infinity', b'tru', b'nulll', b'[1] 2', b'{"a" 1}', b'{1: 2}',
    b'"\\x"', b'"\\u12g4"', b'"a\x01"', b'"\xc3"', b'"\xc0\x80"', b'"\xed\xa0\x80"',
    b'"\xf4\x90\x80\x80"', b'"\xff"', b'[1}', b'{"a":1]', b'"unterminated', b'\xef\xbb\xbf{}',
    b'[' * 50 + b']' * 50, b'"\\ud800"', b'1 ', b'[-]', b'[0.e1]', b'{"a":[]}',
]


@pytest.mark.parametrize("data", CASES)
def test_known_cases_match_a_strict_parser(data):
    """Each case, fed whole and a byte at a time, gets the strict parser's verdict."""
    expected = _strictly_valid(data)
    assert _verdict(data, []) == expected, data
    assert _verdict(data, [1] * len(data)) == expected, data


def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return rng.choice([0, -1, 12345678901234567890, 1.5, -2.5e-300, 1e300])
    if kind == 1:
        return "".join(rng.choice(['a', 'é', '€', '𝄞', '"', '\\', '\n', '\x01', ' '])
                       for _ in range(rng.randrange(6)))
    if kind in (2, 3, 4):
        return rng.choice([True, False, None])
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(100)): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(5)
    if not data or choice == 0:
        return data
    at = rng.randrange(len(data))
    if choice == 1:
        return data[:at] + data[at + 1:]
    if choice == 2:
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    if choice == 3:
        return data[:at] + rng.choice([b",", b"]", b"}", b'"', b"\\", b"e", b"-", b"\xc3",
                                       b"\xed\xa0", b" ", b"0", b":"]) + data[at:]
    return data[:at]


def test_random_documents_and_mutations_match_a_strict_parser():
    """20,000 generated documents, half of them damaged (a byte dropped, changed or
    inserted, or the body cut short), each fed in random chunks: the validator's
    verdict equals the strict parser's every time."""
    rng = random.Random(2026)
    for _ in range(20_000):
        data = json.dumps(_random_json(rng), ensure_ascii=rng.random() < 0.3).encode()
        if rng.random() < 0.5:
            data = _mutate(rng, data)
        sizes = [rng.randrange(1, 8) for _ in range(len(data) // 3)]
        assert _verdict(data, sizes) == _strictly_valid(data), data


def test_nesting_is_capped_so_memory_stays_flat():
    """A body of a million '[' fails once it nests past MAX_DEPTH (100,000): the
    stack of open containers never grows with the body."""
    validator = jsoncheck.Validator()
    with pytest.raises(jsoncheck.JsonError, match="nested deeper"):
        for _ in range(10):
            validator.feed(b"[" * 100_000)


def test_a_failed_validator_stays_failed():
    """After an error every further call fails too: a damaged body can never finish."""
    validator = jsoncheck.Validator()
    with pytest.raises(jsoncheck.JsonError):
        validator.feed(b"[1,,")
    with pytest.raises(jsoncheck.JsonError):
        validator.feed(b"2]")
    with pytest.raises(jsoncheck.JsonError):
        validator.finish()
