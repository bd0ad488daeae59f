"""The heartbeat through a Redis outage, with a stand-in ledger: one warning when Redis
goes, capped exponential backoff while it is away, one info when it is back."""

from __future__ import annotations

import time

from structlog.testing import capture_logs

from harvester.errors import BrokerUnavailable
from harvester.engine.heartbeat import Heartbeat
from harvester.engine.runner import InFlight


class FlakyLedger:
    """Answers like an idle ledger, except that its first ``down`` calls find no Redis.
    State lives in a dict, so the heartbeat's shallow copy shares it."""

    def __init__(self, down: int):
        self.state = {"down": down, "calls": []}
        self.wait_seconds = 120.0

    def _call(self) -> None:
        self.state["calls"].append((time.monotonic(), self.wait_seconds))
        if self.state["down"] > 0:
            self.state["down"] -= 1
            raise BrokerUnavailable("redis://127.0.0.1:6379/0", "Connection refused")

    def renew(self, leases: list) -> None:
        pass

    def active_jobs(self) -> list[str]:
        self._call()
        return []


class Dispatcher:
    def send_page(self, job_id: str, page: int, *, urgent: bool = False) -> None: ...

    def send_finalize(self, job_id: str) -> None: ...


def test_an_outage_is_one_warning_then_capped_backoff_then_one_info():
    """Redis away for 6 beats: the heartbeat logs `redis.unavailable` once and
    `redis.available` once (with how long it was down), retries 1 s, 2 s, 4 s... apart
    but never more than its beat interval, and its ledger calls never wait inside the
    ledger (the outage is waited out by the heartbeat, not by each call)."""
    ledger = FlakyLedger(down=6)
    heartbeat = Heartbeat(ledger, Dispatcher(), InFlight(), lease_seconds=0.9)  # beats 0.3 s
    with capture_logs() as captured:
        heartbeat.start()
        deadline = time.monotonic() + 20
        while len(ledger.state["calls"]) < 9 and time.monotonic() < deadline:
            time.sleep(0.05)
        heartbeat.stop()
        heartbeat.join(5)
    events = [(e["event"], e["log_level"]) for e in captured]
    assert events == [("redis.unavailable", "warning"), ("redis.available", "info")]
    assert captured[1]["down_seconds"] > 0
    assert all(wait == 0 for _, wait in ledger.state["calls"]), \
        "the heartbeat's ledger calls fail fast"
    assert ledger.wait_seconds == 120.0, "the runner's ledger still waits for Redis"
    gaps = [b[0] - a[0] for a, b in zip(ledger.state["calls"], ledger.state["calls"][1:])]
    assert all(gap <= 0.3 * 1.05 + 0.1 for gap in gaps), gaps


def test_retry_delays_double_from_one_second_up_to_the_beat_interval():
    """1, 2, 4 s, then the beat interval (5 s for 15 s leases), jittered 80-100%."""
    heartbeat = Heartbeat(FlakyLedger(down=0), Dispatcher(), InFlight(), lease_seconds=15)
    for failures, nominal in [(1, 1), (2, 2), (3, 4), (4, 5), (10, 5), (100, 5)]:
        delay = heartbeat.retry_delay(failures)
        assert 0.8 * nominal <= delay <= nominal, (failures, delay)
