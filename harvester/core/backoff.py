"""Backoff maths and Retry-After parsing: pure functions, no I/O."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def compute_backoff(attempt: int, *, factor: float, maximum: float,
                    rng: random.Random | None = None) -> float:
    """Seconds to wait before try number ``attempt + 1`` (``attempt`` >= 1).

    Exponential (``factor * 2**(attempt-1)``) capped at ``maximum``, with
    "equal jitter": half the delay is kept, the other half is random, so
    workers that failed together do not retry in lock-step yet never retry
    sooner than half the nominal delay.
    """
    if attempt < 1 or factor <= 0:
        return 0.0
    nominal = min(maximum, factor * (2 ** min(attempt - 1, 62)))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date).

    ``None`` when the header is missing or unparseable; never negative.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())
