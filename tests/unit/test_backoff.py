"""harvester.core.backoff: exponential backoff with equal jitter, and Retry-After parsing."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from harvester.core.backoff import compute_backoff, parse_retry_after

NOW = datetime(2024, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("factor, maximum", [(0.5, 60.0), (1.0, 3.0), (0.05, 0.2)])
def test_backoff_bounds(attempt, factor, maximum):
    """The delay lies in [nominal/2, nominal], nominal = min(maximum, factor*2**(attempt-1))."""
    nominal = min(maximum, factor * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    for _ in range(200):
        delay = compute_backoff(attempt, factor=factor, maximum=maximum, rng=rng)
        assert nominal / 2 <= delay <= nominal


def test_backoff_grows_exponentially():
    """Below the cap, the lower bound doubles with each attempt."""
    lows = [compute_backoff(a, factor=1.0, maximum=1e9, rng=_Fixed(0.0)) for a in (1, 2, 3, 4)]
    assert lows == [0.5, 1.0, 2.0, 4.0]
    highs = [compute_backoff(a, factor=1.0, maximum=1e9, rng=_Fixed(1.0)) for a in (1, 2, 3, 4)]
    assert highs == [1.0, 2.0, 4.0, 8.0]


def test_backoff_capped_by_maximum():
    """A late attempt never waits longer than maximum, nor less than maximum/2."""
    rng = random.Random(7)
    for attempt in (10, 50, 1000, 10**6):
        delay = compute_backoff(attempt, factor=0.5, maximum=60.0, rng=rng)
        assert 30.0 <= delay <= 60.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_attempt_below_1_is_zero(attempt):
    """Attempt 0 (or less) waits nothing."""
    assert compute_backoff(attempt, factor=0.5, maximum=60.0, rng=random.Random(1)) == 0.0


def test_backoff_zero_factor_is_zero():
    """backoff_factor = 0 disables waiting."""
    assert compute_backoff(3, factor=0.0, maximum=60.0, rng=random.Random(1)) == 0.0


def test_backoff_is_deterministic_with_seeded_rng():
    """The same seed gives the same delays; the jitter really varies between draws."""
    first = [compute_backoff(a, factor=0.5, maximum=60, rng=random.Random(42)) for a in range(1, 9)]
    again = [compute_backoff(a, factor=0.5, maximum=60, rng=random.Random(42)) for a in range(1, 9)]
    assert first == again
    rng = random.Random(42)
    draws = {compute_backoff(4, factor=0.5, maximum=60, rng=rng) for _ in range(20)}
    assert len(draws) > 1


class _Fixed(random.Random):
    """A Random whose uniform(a, b) returns a + fraction * (b - a)."""

    def __init__(self, fraction: float):
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a, b):  # type: ignore[override]
        return a + self.fraction * (b - a)


# ---------------------------------------------------------------- Retry-After

@pytest.mark.parametrize("header, expected", [
    ("120", 120.0),
    ("0", 0.0),
    (" 7 ", 7.0),
    ("3600", 3600.0),
])
def test_retry_after_seconds(header, expected):
    """Delta-seconds are returned as float seconds."""
    assert parse_retry_after(header, now=NOW) == expected


def test_retry_after_http_date_in_future():
    """An HTTP-date 90 s after now means wait 90 s."""
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(header, now=NOW) == pytest.approx(90.0)


def test_retry_after_literal_http_date():
    """The RFC 9110 example date parses against a fixed now."""
    now = datetime(2015, 10, 21, 7, 27, 0, tzinfo=timezone.utc)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == pytest.approx(60.0)


def test_retry_after_http_date_in_past_is_zero():
    """A date already passed means no wait, never a negative one."""
    header = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(header, now=NOW) == 0.0


@pytest.mark.parametrize("header", ["soon", "", "-5", "1.5", "12abc", "Wed, 99 Foo 2015", "   "])
def test_retry_after_garbage_is_none(header):
    """Anything neither delta-seconds nor an HTTP-date gives None."""
    assert parse_retry_after(header, now=NOW) is None


def test_retry_after_missing_is_none():
    """No header at all gives None."""
    assert parse_retry_after(None, now=NOW) is None


@pytest.mark.parametrize("header", ["\u00b2", "1\u00b3"])
def test_retry_after_superscript_digits_are_garbage(header):
    """A latin-1 header with superscript digits (isdigit() but not a number) gives None."""
    assert parse_retry_after(header, now=NOW) is None
