"""Politeness across the whole cluster: rate, concurrency and Retry-After pauses.

Celery's ``rate_limit`` is per worker, so N workers would send N times the
rate. Here every request of a job, on any worker, first asks Redis
(``lua/acquire.lua``, one atomic script on Redis's own clock):

- a pause set by a 429/503 ``Retry-After`` holds every request of the job;
- ``max_in_flight`` is a leased semaphore: a ZSET of slots, each expiring unless
  its worker's heartbeat renews it, so a dead worker frees its slot within one
  lease;
- ``rate_per_second`` is a token bucket whose burst is a twentieth of a
  second's worth, so no one-second window sees more than rate + 5% (the API
  sees a little more jitter than Redis's clock does; 10% stays a safe bound).
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable

from ..core.spec import LimitsSpec
from ..edges.ledger import Ledger

MAX_POLL_SECONDS = 0.25


def burst_for(rate: float) -> float:
    return max(1.0, rate / 20)


# How stale this process's view of a job's Retry-After pause may be (see
# RequestLimiter.maybe_paused), and how far apart the hosts' clocks may be.
PAUSE_CHECK_SECONDS = 0.1
CLOCK_SKEW_SECONDS = 5.0


class RequestLimiter:
    def __init__(self, ledger: Ledger, *, slot_seconds: float = 15.0):
        self.ledger = ledger
        self.slot_ms = int(slot_seconds * 1000)
        self._held: dict[str, tuple[str, str]] = {}  # slot id -> (job, inflight key)
        self._pauses: dict[str, tuple[float, float]] = {}  # job -> (read at, paused until)
        self._lock = threading.Lock()

    def maybe_paused(self, job_id: str) -> bool:
        """Whether the job may be under a Retry-After pause, so that its next request must
        pass :meth:`acquire`. Read from Redis at most every ``PAUSE_CHECK_SECONDS`` per
        process: a pause another worker set holds this one's requests within ~0.1 s, for
        ~10 reads a second instead of one per page (a run of pages starts with one)."""
        now = time.monotonic()
        with self._lock:
            seen = self._pauses.get(job_id)
        if seen is None or now - seen[0] > PAUSE_CHECK_SECONDS:
            value = self.ledger.field(job_id, "paused_until")
            seen = (now, int(value) / 1000 if value else 0.0)
            with self._lock:
                self._pauses[job_id] = seen
        # paused_until is on Redis' clock: a pause that may still hold on any host's.
        return seen[1] > time.time() - CLOCK_SKEW_SECONDS

    def acquire(self, job_id: str, limits: LimitsSpec,
                should_stop: Callable[[], bool] = lambda: False) -> str | None:
        """Wait until the job may send one more request; returns the slot to release."""
        slot = secrets.token_hex(8)
        keys = [self.ledger.key(job_id, "job"), self.ledger.key(job_id, "bucket"),
                self.ledger.key(job_id, "inflight")]
        rate = limits.rate_per_second
        args = [slot, self.slot_ms, "" if rate is None else repr(float(rate)),
                "" if rate is None else repr(burst_for(rate)),
                "" if limits.max_in_flight is None else limits.max_in_flight]
        while True:
            wait_ms = int(self.ledger.run_script("acquire", keys, args))
            if wait_ms == 0:
                if limits.max_in_flight is None:
                    return None
                with self._lock:
                    self._held[slot] = (job_id, keys[2])
                return slot
            if should_stop():
                raise InterruptedError("worker is stopping")
            # A little jitter so waiting workers do not ask in lock-step.
            time.sleep(min(wait_ms / 1000, MAX_POLL_SECONDS) * random.uniform(0.8, 1.2))

    def release(self, slot: str | None) -> None:
        if slot is None:
            return
        with self._lock:
            held = self._held.pop(slot, None)
        if held is not None:
            self.ledger.run_script("release_slot", [held[1]], [slot])

    def renew(self) -> None:
        """Heartbeat: keep the slots of requests still running."""
        with self._lock:
            held = list(self._held.items())
        if held:
            self.ledger.run_script("renew_slots", [key for _, (_, key) in held],
                                   [self.slot_ms, *[slot for slot, _ in held]])

    def pause(self, job_id: str, seconds: float) -> float:
        """Hold the whole job for ``seconds`` (Retry-After); returns when it ends (epoch s)."""
        until = int(self.ledger.run_script("pause", [self.ledger.key(job_id, "job")],
                                           [int(seconds * 1000)])) / 1000
        with self._lock:
            self._pauses[job_id] = (time.monotonic(), until)
        return until
