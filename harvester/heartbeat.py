"""A worker's background thread: renews the leases of its pages and reaps the
pages (and finalizers) of workers that died.

kombu hands a dead worker's unacked message back only after the visibility
timeout (which must exceed the longest page), so waiting for it would stall a
job for many minutes. Leases are short instead: a page whose lease is not
renewed within ``lease_seconds`` is re-sent by whichever worker notices first.
The original message may still come back later; the ledger drops it as a
duplicate.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import structlog

from .dispatch import QUEUE_KEYS
from .errors import HarvesterError
from .ledger import FINALIZER_PAGE, Ledger
from .runner import Dispatcher, InFlight

log = structlog.get_logger("harvester.heartbeat")


class Heartbeat(threading.Thread):
    def __init__(self, ledger: Ledger, dispatcher: Dispatcher, in_flight: InFlight,
                 *, lease_seconds: float, renew_slots: Callable[[], None] = lambda: None):
        super().__init__(name="harvester-heartbeat", daemon=True)
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.in_flight = in_flight
        self.renew_slots = renew_slots
        self.interval = max(0.2, lease_seconds / 3)
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval * random.uniform(0.8, 1.0)):
            try:
                self.beat()
            except HarvesterError as exc:
                log.warning("heartbeat.failed", error=str(exc))
            except Exception:  # the thread must outlive any one bad beat
                log.exception("heartbeat.crashed")

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
