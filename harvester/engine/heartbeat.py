"""A worker's background thread: renews the leases of its pages and reaps the
pages (and finalizers) of workers that died.

kombu hands a dead worker's unacked message back only after the visibility
timeout (which must exceed the longest page), so waiting for it would stall a
job for many minutes. Leases are short instead: a page whose lease is not
renewed within ``lease_seconds`` is re-sent by whichever worker notices first.
The original message may still come back later; the ledger drops it as a
duplicate.

While Redis is away the heartbeat logs one ``redis.unavailable`` warning, then
tries again after 1, 2, 4... seconds, never more than its beat interval (so the
leases are renewed soon after Redis is back), and logs one ``redis.available``
when a beat goes through again.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Callable

import structlog

from ..edges.ledger import Ledger
from ..edges.sealing import FINALIZER_PAGE
from ..errors import BrokerUnavailable, HarvesterError
from .dispatch import QUEUE_KEYS
from .runner import Dispatcher, InFlight

log = structlog.get_logger("harvester.heartbeat")


class Heartbeat(threading.Thread):
    def __init__(self, ledger: Ledger, dispatcher: Dispatcher, in_flight: InFlight,
                 *, lease_seconds: float, renew_slots: Callable[[], None] = lambda: None):
        super().__init__(name="harvester-heartbeat", daemon=True)
        # Its own view of the ledger that never waits for Redis: an outage is waited
        # out in run() (one warning, capped backoff), not inside each ledger call.
        self.ledger = copy.copy(ledger)
        self.ledger.wait_seconds = 0
        self.dispatcher = dispatcher
        self.in_flight = in_flight
        self.renew_slots = renew_slots
        self.interval = max(0.2, lease_seconds / 3)
        self._stopping = threading.Event()

    def run(self) -> None:
        delay = self.interval * random.uniform(0.8, 1.0)
        failures = 0  # beats in a row that found no Redis
        down_since = 0.0
        while not self._stopping.wait(delay):
            delay = self.interval * random.uniform(0.8, 1.0)
            try:
                self.beat()
            except BrokerUnavailable as exc:
                if failures == 0:
                    down_since = time.monotonic()
                    log.warning("redis.unavailable", reason=str(exc))
                failures += 1
                delay = self.retry_delay(failures)
                continue
            except HarvesterError as exc:
                log.warning("heartbeat.failed", error=str(exc))
            except Exception:  # the thread must outlive any one bad beat
                log.exception("heartbeat.crashed")
            if failures:
                log.info("redis.available", down_seconds=round(time.monotonic() - down_since, 1))
                failures = 0

    def retry_delay(self, failures: int) -> float:
        """Seconds to the next try after ``failures`` beats in a row found no Redis:
        1, 2, 4... capped at the beat interval, with a little jitter."""
        return min(self.interval, 2.0 ** min(failures - 1, 16)) * random.uniform(0.8, 1.0)

    def beat(self) -> None:
        self.ledger.renew(self.in_flight.snapshot())
        self.renew_slots()
        for job_id in self.ledger.active_jobs():
            for page in self.ledger.reap(job_id, QUEUE_KEYS):
                log.warning("lease.expired", job_id=job_id, page=page)
                if page == FINALIZER_PAGE:
                    self.dispatcher.send_finalize(job_id)
                else:
                    self.dispatcher.send_page(job_id, page, urgent=True)

    def stop(self) -> None:
        self._stopping.set()
