"""Starting, retrying and cancelling jobs: the client side of the ledger.

The coordinator never holds a job's pages in memory or in the queue: it creates
the job in the ledger, which hands back the first window of pages to enqueue;
from then on each resolved page claims the next ones (see ``lua/_prelude.lua``).
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import datetime, timezone

import structlog

from ..core import pagination
from ..core.amendment import amend
from ..core.spec import JobSpec
from ..edges.ledger import FINAL_STATES, Ledger
from ..edges.store import open_store
from ..errors import JobSpecError, JobStateError
from ..settings import Settings
from .runner import Dispatcher

log = structlog.get_logger("harvester.coordinator")


def new_job_id(spec: JobSpec) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{spec.name}-{stamp}-{secrets.token_hex(3)}"


def submit(spec: JobSpec, ledger: Ledger, dispatcher: Dispatcher, settings: Settings, *,
           local: bool = False, job_path: str = "<job>") -> str:
    if spec.http.page_deadline + 60 > settings.visibility_timeout:
        raise JobSpecError(
            f"must stay a minute below the workers' visibility timeout"
            f" ({settings.visibility_timeout:g} s, HARVEST_VISIBILITY_TIMEOUT), or a healthy"
            " page would be delivered twice", path=job_path, key="http.page_deadline")
    job_id = new_job_id(spec)
    store = open_store(spec.output.dir)
    store.claim(job_id, job_path)
    spec = replace(spec, output=replace(spec.output, dir=store.location))
    # A chain, or a fan-out that learns its total from page 1, starts with page 1
    # alone; the pages it names (or counts) are added as it commits.
    total = pagination.known_total(spec) if pagination.is_fan_out(spec) else None
    open_ended = total is None
    pages = ledger.create_job(job_id, spec, total=total or 1, open_ended=open_ended,
                              window=settings.window, local=local)
    dispatcher.send_pages(job_id, pages)
    log.info("job.submitted", job_id=job_id, total=total, first_pages=len(pages))
    return job_id


def retry(job_id: str, ledger: Ledger, dispatcher: Dispatcher, *,
          fixed: JobSpec | None = None, job_path: str = "<job>") -> int:
    """Run again the pages that failed or never finished; returns how many are queued.

    ``fixed``: a corrected job file (new token, timeouts, limits); refused, naming
    the key, where it changes what a page requests (see :mod:`harvester.core.amendment`).
    """
    state = ledger.state(job_id)
    if state.state not in FINAL_STATES:
        raise JobStateError(f"job {job_id} is still {state.state}; wait for it or cancel it",
                            job_id=job_id, state=state.state)
    spec = ledger.spec(job_id)
    if fixed is not None:
        spec = amend(spec, fixed, job_id=job_id, path=job_path)
        ledger.amend_spec(job_id, spec)
    # A chain resumes from its failed page; a job that never learnt its total
    # (page 1 failed) learns it now.
    reopen = pagination.is_chain(spec) or (
        pagination.learns_total(spec) and not ledger.is_committed(job_id, 1))
    result = ledger.reopen(job_id, open_ended=reopen)
    if result != "running":
        raise JobStateError(f"job {job_id} could not be reopened (state {result})",
                            job_id=job_id, state=result)
    pages = ledger.fill(job_id)
    dispatcher.send_pages(job_id, pages)
    if not pages:
        # Nothing left to fetch (e.g. every page was committed before a cancel):
        # let the finalizer seal what is there.
        _finalize_now(job_id, ledger, dispatcher)
    log.info("job.retried", job_id=job_id, queued=len(pages))
    return len(pages)


def _finalize_now(job_id: str, ledger: Ledger, dispatcher: Dispatcher) -> None:
    if ledger.finalize_if_complete(job_id):
        dispatcher.send_finalize(job_id)


def cancel(job_id: str, ledger: Ledger, dispatcher: Dispatcher) -> str:
    result = ledger.cancel(job_id)
    if result == "cancelled":
        dispatcher.send_finalize(job_id)
    return result
