"""Thin tasks: decode arguments, bind log context, call the library."""

from __future__ import annotations

import threading
from functools import cache

import structlog
from celery.exceptions import Reject
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from harvester.engine.dispatch import (
    FINALIZE_TASK,
    PAGE_TASK,
    RUN_TASK,
    CeleryDispatcher,
)
from harvester.engine.finalizer import finalize
from harvester.engine.heartbeat import Heartbeat
from harvester.engine.runner import PageRunner
from harvester.errors import Abandoned, HarvesterError, PageFailed
from harvester.settings import Settings, ledger_for

from .app import app

_lock = threading.Lock()


@cache
def _runner() -> PageRunner:
    """This process's runner and heartbeat, built on first use (after any fork)."""
    with _lock:
        settings = Settings.from_env()
        ledger = ledger_for(settings)
        dispatcher = CeleryDispatcher(app, run_pages=settings.run_pages)
        runner = PageRunner(ledger, dispatcher, settings)
        Heartbeat(ledger, dispatcher, runner.in_flight, lease_seconds=settings.lease_seconds,
                  renew_slots=runner.limiter.renew).start()
        return runner


def _bind(**context: object) -> None:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)


# A page that failed for good raises PageFailed (see PageRunner._fail): the task ends
# in FAILURE, so its task-failed event carries the error class and (scrubbed) message
# for Flower; task_acks_on_failure_or_timeout acks its message all the same, and the
# ledger has already recorded the failure. ``throws`` makes Celery log it as an
# expected error: one INFO line, no traceback.
@app.task(name=PAGE_TASK, bind=True, throws=(PageFailed,))
def harvest_page(self, job_id: str, page: int) -> str:
    _bind(job_id=str(job_id), page=int(page), task_id=self.request.id)
    return _run(str(job_id), [int(page)])


# A run of pages (see harvester.core.runs): Flower shows the pages in its args; a page of
# it that failed for good makes it FAILURE, naming every failed page of the run.
@app.task(name=RUN_TASK, bind=True, throws=(PageFailed,))
def harvest_pages(self, job_id: str, pages: list[int]) -> str:
    _bind(job_id=str(job_id), task_id=self.request.id)
    return _run(str(job_id), [int(page) for page in pages])


def _run(job_id: str, pages: list[int]) -> str:
    try:
        return _runner().run(job_id, pages)
    except Abandoned:
        # Back to the queue now, not after a lease or the visibility timeout.
        raise Reject("worker stopping", requeue=True) from None


@worker_shutting_down.connect
def _hand_pages_back(**_: object) -> None:
    # SIGTERM: running pages stop at their next chunk and are requeued.
    if _runner.cache_info().currsize:
        _runner().stopping.set()


@app.task(name=FINALIZE_TASK, bind=True)
def finalize_job(self, job_id: str) -> str:
    _bind(job_id=str(job_id), task_id=self.request.id)
    runner = _runner()
    runner.in_flight.add(str(job_id), 0)
    try:
        return finalize(runner.ledger, str(job_id), part_bytes=runner.settings.part_bytes,
                        worker=runner.worker_name)
    except (HarvesterError, OSError) as exc:
        # Recorded for `harvest run`/`status` to show; the lease makes it run again.
        runner.ledger.record_finalizer_error(str(job_id), f"{type(exc).__name__}: {exc}")
        raise
    finally:
        runner.in_flight.remove(str(job_id), 0)


@worker_ready.connect
@worker_process_init.connect
def _start_heartbeat(**_: object) -> None:
    # Every worker process reaps dead workers' pages from the start, not only
    # once it has run a page of its own.
    _runner()
