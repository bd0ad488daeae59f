"""One page to its end on a worker: its attempts (each through the cluster-wide
limiter), the waits between them, then its commit or its failure for good.

:class:`PageAttempts` is what :class:`~harvester.engine.runner.PageRunner` calls for
each page of a run; one attempt is :class:`~harvester.engine.fetcher.PageFetcher`'s.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from ..core import pagination
from ..core.backoff import compute_backoff
from ..core.following import Following
from ..core.pagination import Link
from ..core.secrets import scrub
from ..core.spec import JobSpec
from ..edges.ledger import Ledger
from ..errors import (
    Abandoned,
    HTTPStatusError,
    InternalError,
    PageError,
    PageFailed,
    PaginationError,
    StorageError,
)
from ..settings import Settings
from .chain import ChainAhead
from .fetcher import Ahead, Fetched, PageFetcher, now_iso, page_url
from .limits import RequestLimiter

if TYPE_CHECKING:
    from .runner import Dispatcher

log = structlog.get_logger("harvester.page")

MAX_RETRY_AFTER = 900.0


class FailedForGood(Exception):
    """Inside a run: a page is recorded failed for good; the run goes on."""

    def __init__(self, failure: PageFailed, outcome: str, claimed: list[int]):
        self.failure = failure
        self.outcome = outcome
        self.claimed = claimed


@dataclass(frozen=True)
class Written:
    """A page of a run written to the segment, waiting for the run's fsync and commit."""

    page: int
    link: Link | None
    task_try: int
    total: int | None
    fetched: Fetched
    sent: int


class PageAttempts:
    def __init__(self, ledger: Ledger, dispatcher: Dispatcher, settings: Settings,
                 fetcher: PageFetcher, limiter: RequestLimiter, *, worker_name: str,
                 stopping: threading.Event):
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.fetcher = fetcher
        self.limiter = limiter
        self.worker_name = worker_name
        self.stopping = stopping
        # Longest job-wide pause a Retry-After may impose: waiting happens inside
        # the task, which must finish well within kombu's visibility timeout.
        self.max_pause = max(1.0, min(MAX_RETRY_AFTER, settings.visibility_timeout / 4))

    def harvest(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
                 task_try: int, *, paused: bool, total: int | None, give_back_at: float,
                 written: list[Written] | None = None, chain: ChainAhead | None = None,
                 send_ahead: bool = False) -> tuple[str, list[int], int]:
        """One page to its end: (outcome, pages claimed, raw bytes); a page failed for
        good raises FailedForGood. With ``written`` (a fan-out run), the page is only
        written, and left there for the run's one fsync and commit (outcome
        ``written``). ``chain``: the first attempt takes the request sent ahead for this
        page, if any; with ``send_ahead``, the successor's request is sent ahead as soon
        as the body names it (see :mod:`harvester.engine.chain`)."""
        ahead = chain.request_for(page, link, paused=paused) if chain is not None else None
        try:
            return self._attempts(job_id, spec, page, link, task_try, paused=paused,
                                  total=total, give_back_at=give_back_at, written=written,
                                  ahead=ahead, chain=chain if send_ahead else None)
        finally:
            if ahead is not None:
                ahead.cancel()  # a no-op once the first attempt took it

    def _attempts(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
                  task_try: int, *, paused: bool, total: int | None, give_back_at: float,
                  written: list[Written] | None, ahead: Ahead | None,
                  chain: ChainAhead | None) -> tuple[str, list[int], int]:
        http = spec.http
        sent = 0
        attempt = 0
        on_following = None
        if chain is not None:
            def on_following(following: Following) -> None:
                if not self.stopping.is_set():
                    chain.send(job_id, spec, page, following,
                               limited=lambda: self._limited(job_id, spec))
        while True:
            attempt += 1
            structlog.contextvars.bind_contextvars(attempt=attempt, task_try=task_try)
            try:
                limited = paused or attempt > 1 or self._limited(job_id, spec)
                fetched = self.fetcher.fetch(
                    job_id, spec, page, link, limited=limited, total=total,
                    sync=written is None, on_following=on_following,
                    ahead=ahead if attempt == 1 else None)
            except Abandoned:
                raise
            except HTTPStatusError as exc:
                sent += exc.attempts or 1
                if exc.status in spec.pagination.stop_on_status:
                    return (*self._end_at(job_id, page, exc.status), 0)
                if exc.status in http.retry_statuses and attempt <= http.retries:
                    self._wait_to_retry(job_id, page, spec, exc, attempt, give_back_at)
                    continue
                return (*self._fail(job_id, spec, page, link, exc, sent), 0)
            except (PageError, StorageError) as exc:
                sent += (exc.attempts if isinstance(exc, PageError) else 0) or 1
                if exc.retryable and attempt <= http.retries:
                    self._wait_to_retry(job_id, page, spec, exc, attempt, give_back_at)
                    continue
                return (*self._fail(job_id, spec, page, link, exc, sent), 0)
            except Exception as exc:  # noqa: BLE001 - any surprise fails the page, never hangs the job
                log.exception("page.unexpected_error")
                return (*self._fail(job_id, spec, page, link, InternalError(
                    f"unexpected {type(exc).__name__} inside the page: {_exception_text(exc)}"
                    " (a bug in the harvester: please report it with the worker log)",
                    error_class=type(exc).__name__), sent + 1), 0)
            sent += fetched.requests_sent
            raw_bytes = fetched.commit.raw_bytes
            if written is None:
                return (*self.commit(job_id, spec, page, link, fetched, sent), raw_bytes)
            written.append(Written(page, link, task_try, total, fetched, sent))
            return "written", [], raw_bytes

    def _limited(self, job_id: str, spec: JobSpec) -> bool:
        """Whether a request must pass the limiter. With no limits set, the limiter only
        enforces Retry-After pauses: skip its round trip unless this process's view of
        the job (at most 0.1 s old) shows one may hold."""
        return spec.limits.rate_per_second is not None \
            or spec.limits.max_in_flight is not None or self.limiter.maybe_paused(job_id)

    def commit(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
               fetched: Fetched, sent: int) -> tuple[str, list[int]]:
        follows = fetched.following
        successor = follows.next_link
        outcome, claimed = self.ledger.commit(
            job_id, fetched.commit, total=follows.total, close=follows.close,
            next_link=successor.to_dict() if successor else None,
            identity=successor.identity if successor else None, requests=sent)
        if outcome == "repeated":
            self.fetcher.discard(job_id, fetched.commit)
            what = successor.cursor if successor.cursor is not None else successor.url
            return self._fail(job_id, spec, page, link, PaginationError(
                f"the next {'cursor' if successor.cursor is not None else 'URL'}"
                f" {_clip(what.render())!r} was already followed earlier in this job: the"
                " API is looping; stopping here instead"), sent)
        if outcome in ("duplicate", "closed"):
            # Someone else committed it, or the job was cancelled: the bytes
            # we wrote are never referenced, so give the space back.
            self.fetcher.discard(job_id, fetched.commit)
        if follows.end_reason:
            log.info("chain.ended", reason=follows.end_reason)
        if follows.capped and outcome in ("committed", "last"):
            self.ledger.note_capped(job_id, follows.capped)
        log.info("page." + ("committed" if outcome in ("committed", "last") else outcome),
                 raw_bytes=fetched.commit.raw_bytes, gz_bytes=fetched.commit.length,
                 requests=sent)
        if follows.abort and outcome == "committed":
            log.error("job.aborted", reason=follows.abort)
            if self.ledger.abort(job_id, follows.abort) == "aborted":
                self.dispatcher.send_finalize(job_id)
            return "aborted", []
        return outcome, claimed

    def _end_at(self, job_id: str, page: int, status: int) -> tuple[str, list[int]]:
        """stop_on_status: the job ends before this page; nothing is written for it."""
        outcome = self.ledger.end_at(job_id, page)
        log.info("chain.ended", reason=f"status {status} (stop_on_status)")
        return outcome, []

    def _wait_to_retry(self, job_id: str, page: int, spec: JobSpec,
                       exc: PageError | StorageError, attempt: int,
                       give_back_at: float) -> None:
        delay = self._delay_before_retry(job_id, spec, exc, attempt)
        if time.monotonic() + delay + spec.http.page_deadline > give_back_at:
            raise Abandoned(job_id, page)  # requeued, its tries kept
        log.warning("page.retry", error=type(exc).__name__, message=str(exc),
                    delay=round(delay, 3),
                    status=exc.status if isinstance(exc, PageError) else None)
        if self.stopping.wait(delay):
            raise Abandoned(job_id, page)

    def _delay_before_retry(self, job_id: str, spec: JobSpec, exc: Exception,
                            attempt: int) -> float:
        """Backoff with jitter; a 429/503 Retry-After pauses the whole job instead."""
        http = spec.http
        retry_after = exc.retry_after if isinstance(exc, HTTPStatusError) else None
        if retry_after is not None and exc.status in (429, 503):
            pause = min(retry_after, self.max_pause)
            self.limiter.pause(job_id, pause)
            log.warning("job.paused", seconds=round(pause, 3), status=exc.status)
            # The limiter holds every request until the pause ends; this worker
            # adds a little jitter of its own on top, never instead.
            return random.uniform(0, min(1.0, http.backoff_factor))
        return compute_backoff(attempt, factor=http.backoff_factor, maximum=http.backoff_max)

    def _fail(self, job_id: str, spec: JobSpec, page: int, link: Link | None, exc: Exception,
              sent: int) -> tuple[str, list[int]]:
        status = exc.status if isinstance(exc, PageError) else None
        error_class = exc.error_class if isinstance(exc, InternalError) else type(exc).__name__
        record = {
            "page": page,
            "url": (exc.url if isinstance(exc, PageError) else None) or page_url(spec, page, link),
            "attempts": sent,
            "status": status,
            "error": str(status) if status is not None else error_class,
            "error_class": error_class,
            "message": scrub(str(exc)),
            "failed_at": now_iso(),
            "worker": self.worker_name,
        }
        log.error("page.failed", error=record["error_class"], message=record["message"],
                  requests=sent)
        outcome, claimed = self.ledger.fail(job_id, page, record,
                                            close=self._closes_on_failure(spec, page))
        if outcome not in ("failed", "last"):
            return outcome, claimed  # committed by another worker, or the job was closed
        # Recorded failed for good: the run goes on, and its task ends in FAILURE for
        # Celery events and Flower (the ledger stays the truth).
        raise FailedForGood(PageFailed(job_id, page, error_class, record["message"]),
                             outcome, claimed)

    @staticmethod
    def _closes_on_failure(spec: JobSpec, page: int) -> bool:
        # A failed chain page names no successor; nor does a failed page 1 of a
        # job that learns its total from page 1. retry reopens both.
        return pagination.is_chain(spec) or (page == 1 and pagination.learns_total(spec))


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} chars)"


def _exception_text(exc: BaseException) -> str:
    return scrub(_clip(str(exc) or type(exc).__name__))
