"""RequestLimiter.maybe_paused: a Retry-After pause set by any worker reaches every
worker's next request within PAUSE_CHECK_SECONDS, with one Redis read per interval per
process, not one per page. A stand-in ledger and clock; no sockets."""

from __future__ import annotations

from harvester.engine import limits
from harvester.engine.limits import PAUSE_CHECK_SECONDS, RequestLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Ledger:
    """The job hash's paused_until field, and how often it was read."""

    def __init__(self) -> None:
        self.paused_until: str | None = None
        self.reads = 0

    def field(self, job_id: str, name: str) -> str | None:
        assert name == "paused_until"
        self.reads += 1
        return self.paused_until

    def key(self, job_id: str, name: str) -> str:
        return f"hv:{{{job_id}}}:{name}"

    def run_script(self, name: str, keys: list, args: list):
        assert name == "pause"
        return int(limits.time.time() * 1000) + int(args[0])


def test_a_pause_set_elsewhere_is_seen_within_the_check_interval(monkeypatch):
    """No pause: many pages in one interval cost one read. Another worker pauses the job:
    within PAUSE_CHECK_SECONDS this process sees it; while it lasts (and for the clock-skew
    margin after) requests go through the limiter; then they skip it again."""
    clock = Clock()
    monkeypatch.setattr(limits, "time", clock)
    ledger = Ledger()
    limiter = RequestLimiter(ledger)
    assert not any(limiter.maybe_paused("j") for _ in range(100))
    assert ledger.reads == 1
    ledger.paused_until = str(int((clock.now + 2.0) * 1000))  # set by another worker
    assert not limiter.maybe_paused("j"), "within the interval the old view stands"
    clock.sleep(PAUSE_CHECK_SECONDS + 0.01)
    assert limiter.maybe_paused("j")
    assert ledger.reads == 2
    clock.sleep(2.0 + limits.CLOCK_SKEW_SECONDS + 0.1)
    assert not limiter.maybe_paused("j")


def test_this_workers_own_pause_holds_at_once(monkeypatch):
    """A pause this process sets holds its next request at once, without a read."""
    clock = Clock()
    monkeypatch.setattr(limits, "time", clock)
    ledger = Ledger()
    limiter = RequestLimiter(ledger)
    assert not limiter.maybe_paused("j")
    limiter.pause("j", 1.0)
    assert limiter.maybe_paused("j")
    assert ledger.reads == 1
