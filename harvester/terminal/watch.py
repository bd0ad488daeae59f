"""Following a job from the terminal until it is final, then saying how it ended.

Used by ``harvest run`` and ``harvest retry`` (not detached). Interrupted
(Ctrl-C, SIGTERM, SIGHUP): an external job goes on and only the watching
stops; a ``--local`` job is cancelled and its committed pages sealed, because
its workers stop with the command.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol

from ..edges.ledger import JobState, Ledger
from ..engine import coordinator
from ..engine.runner import Dispatcher
from ..errors import BrokerUnavailable, HarvesterError, JobNotFound, LocalClusterError
from .progress import Progress

EXIT_OK, EXIT_FAILED_PAGES, EXIT_INTERRUPTED = 0, 1, 130
FINALIZE_ATTEMPTS = 3
NO_WORKER_HINT_SECONDS = 30.0


class Watched(Protocol):
    """What watching needs from a command's context."""

    ledger: Ledger
    dispatcher: Dispatcher

    def local_failure(self) -> str | None: ...


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def watch(ctx: Watched, job_id: str, *, local: bool) -> int:
    """Show progress until the job is final; returns the command's exit code."""
    progress = Progress()
    try:
        state = _follow(ctx, job_id, progress, local=local)
    except KeyboardInterrupt:
        progress.close()
        if not local:
            _err(f"\nstopped watching; the job goes on. 'harvest status {job_id}' shows it.")
            return EXIT_INTERRUPTED
        _err("\ninterrupted: cancelling the job and sealing what is committed...")
        coordinator.cancel(job_id, ctx.ledger, ctx.dispatcher)
        deadline = time.monotonic() + 60
        while not ctx.ledger.state(job_id).final and time.monotonic() < deadline:
            time.sleep(0.2)
        _err(f"'harvest retry {job_id} --local' runs the rest.")
        return EXIT_INTERRUPTED
    finally:
        progress.close()
    return report(ctx.ledger, state, local=local)


def _follow(ctx: Watched, job_id: str, progress: Progress, *, local: bool) -> JobState:
    started = time.monotonic()
    hinted = False
    broker_down_since: float | None = None
    # Poll with short waits, so an outage is reported while it lasts.
    ctx.ledger.wait_seconds = 1.0
    while True:
        try:
            state = ctx.ledger.state(job_id)
        except BrokerUnavailable as exc:
            # Redis restarting or unreachable: the workers wait for it too.
            if broker_down_since is None:
                broker_down_since = time.monotonic()
                _err(f"Redis is unreachable ({exc}); waiting for it...")
            time.sleep(1)
            continue
        except JobNotFound:
            raise HarvesterError(
                f"Redis no longer has job {job_id}: it was restarted without persistence,"
                " or flushed. Nothing of this job is reported as done; its pages sit"
                " unsealed in the output dir's .segments. Run the job again into an empty"
                " output dir (and run Redis with appendonly yes).") from None
        if broker_down_since is not None:
            _err(f"Redis is back after {time.monotonic() - broker_down_since:.0f} s")
            broker_down_since = None
        progress.update(state)
        if state.final:
            return state
        failure = ctx.local_failure()
        if failure:
            raise LocalClusterError(failure)
        if state.state == "finalizing" and \
                int(ctx.ledger.field(job_id, "finalize_failures") or 0) >= FINALIZE_ATTEMPTS:
            raise HarvesterError(
                f"the finalizer of {job_id} keeps failing:"
                f" {ctx.ledger.field(job_id, 'finalize_error')}. Fix the cause, then run"
                f" 'harvest finalize {job_id}{' --local' if local else ''}'.")
        if not local and not hinted and state.committed + state.failed == 0 \
                and time.monotonic() - started > NO_WORKER_HINT_SECONDS:
            _err("no page done after 30 s: is a worker running? start one with"
                 " 'harvest worker', or use --local")
            hinted = True
        time.sleep(0.5)


def report(ledger: Ledger, state: JobState, *, local: bool) -> int:
    """Say how a final job ended, and what to run next; returns the exit code."""
    out_dir = ledger.field(state.job_id, "out_dir")
    retry = f"harvest retry {state.job_id}{' --local' if local else ''}"
    if state.aborted:
        _err(f"stopped: {state.aborted}")
        _err(f"{state.committed} page(s) committed to {out_dir}; the job is incomplete.")
    elif state.state == "done":
        _err(f"done: {state.committed} pages committed to {out_dir}")
    elif state.state == "failed":
        _err(f"{state.failed} page(s) failed (listed in {out_dir}/_failed.jsonl);"
             f" {state.committed} committed. Run '{retry}' to run them again.")
        for line in failure_reasons(ledger.failure_sample(state.job_id)):
            _err(f"  {line}")
    else:
        _err(f"job {state.state}: {state.committed} committed, {state.pending} not run."
             f" Run '{retry}' to run the rest.")
    if state.capped:
        _err(f"note: {state.capped}; the output holds only the pages up to the cap"
             " (recorded in _manifest.json as \"capped\").")
    return exit_code(state)


def failure_reasons(failures: dict[int, dict], limit: int = 3) -> list[str]:
    """The commonest reasons among ``failures`` (page -> record), one line each with
    how many pages share it and the first of them, so the terminal says *why*."""
    by_reason: dict[tuple[str, str], list[int]] = {}
    for page, record in failures.items():
        reason = (record.get("error_class") or "?", record.get("message") or "")
        by_reason.setdefault(reason, []).append(page)
    ranked = sorted(by_reason.items(), key=lambda item: (-len(item[1]), min(item[1])))
    lines = []
    for (error_class, message), pages in ranked[:limit]:
        share = f"{len(pages)} pages, e.g. page {min(pages)}" if len(pages) > 1 \
            else f"page {pages[0]}"
        lines.append(f"{error_class}: {message[:300]} ({share})")
    if len(ranked) > limit:
        lines.append(f"... and {len(ranked) - limit} other reason(s)")
    return lines


def exit_code(state: JobState) -> int:
    if state.state == "done":
        return EXIT_OK
    if state.final:
        return EXIT_FAILED_PAGES
    return EXIT_OK
