"""One page, start to finish, on a worker: lease, fetch (with retries), commit or
fail, and hand the queue its next pages.

A :class:`PageRunner` lives once per worker process and is shared by its
threads. One attempt at a page is :class:`~harvester.engine.fetcher.PageFetcher`'s;
this module decides what an attempt's outcome means for the page and the job.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import structlog

from ..core import pagination
from ..core.backoff import compute_backoff
from ..core.pagination import Link
from ..core.runs import PageCost
from ..core.secrets import scrub
from ..core.spec import JobSpec
from ..edges.ledger import Ledger
from ..errors import (
    Abandoned,
    HTTPStatusError,
    InternalError,
    JobNotFound,
    PageError,
    PageFailed,
    PaginationError,
    StorageError,
)
from ..settings import Settings
from .chain import ChainAhead
from .fetcher import Ahead, Fetched, Following, PageFetcher, now_iso, page_url
from .limits import RequestLimiter

log = structlog.get_logger("harvester.page")


MAX_RETRY_AFTER = 900.0
# How far one chain task follows its chain itself (see PageRunner.run); then the
# next page goes through the broker, so a task never holds its message for long.
CHAIN_HOPS = 100
CHAIN_SECONDS = 60.0


class Dispatcher(Protocol):
    """How the library enqueues work; the Celery app provides the real one."""

    def send_page(self, job_id: str, page: int, *, urgent: bool = False) -> None: ...

    def send_pages(self, job_id: str, pages: list[int], *,
                   run_pages: int | None = None) -> None: ...

    def send_finalize(self, job_id: str) -> None: ...


class _FailedForGood(Exception):
    """Inside a run: a page is recorded failed for good; the run goes on."""

    def __init__(self, failure: PageFailed, outcome: str, claimed: list[int]):
        self.failure = failure
        self.outcome = outcome
        self.claimed = claimed


@dataclass(frozen=True)
class _Written:
    """A page of a run written to the segment, waiting for the run's fsync and commit."""

    page: int
    link: Link | None
    task_try: int
    total: int | None
    fetched: Fetched
    sent: int


NOTHING_FOLLOWS = Following()


class InFlight:
    """Pages this process is working on, for the heartbeat to renew their leases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pages: dict[tuple[str, int], int] = {}

    def add(self, job_id: str, page: int) -> None:
        with self._lock:
            key = (job_id, page)
            self._pages[key] = self._pages.get(key, 0) + 1

    def remove(self, job_id: str, page: int) -> None:
        with self._lock:
            key = (job_id, page)
            if self._pages.get(key, 0) <= 1:
                self._pages.pop(key, None)
            else:
                self._pages[key] -= 1

    def snapshot(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self._pages)


class PageRunner:
    def __init__(self, ledger: Ledger, dispatcher: Dispatcher, settings: Settings,
                 *, worker_name: str | None = None):
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.settings = settings
        self.in_flight = InFlight()
        self.limiter = RequestLimiter(ledger, slot_seconds=settings.lease_seconds)
        # Longest job-wide pause a Retry-After may impose: waiting happens inside
        # the task, which must finish well within kombu's visibility timeout.
        self.max_pause = max(1.0, min(MAX_RETRY_AFTER, settings.visibility_timeout / 4))
        self.stopping = threading.Event()
        self.worker_name = worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.fetcher = PageFetcher(ledger, settings, self.limiter, worker_name=self.worker_name,
                                   stopping=self.stopping)
        self._specs: dict[str, tuple[int, JobSpec]] = {}  # job -> (spec_rev, spec)
        self._costs: dict[str, PageCost] = {}  # job -> recent cost per page

    # ------------------------------------------------------------------ entry

    def run(self, job_id: str, pages: list[int]) -> str:
        """Harvest a run of pages of ``job_id``, one after the other, each once; returns
        what it did, or raises :class:`PageFailed` (naming every page of the run that
        failed) once the rest of the run is committed.

        A chain page's task goes on with the page it names, up to ``CHAIN_HOPS`` pages
        or ``CHAIN_SECONDS``: the ledger still leases and records each page, but the
        successor skips the trip through the broker (~8 ms a page, a third of a chain's
        time at 20 ms API latency). Then the successor is sent as usual. While it goes
        on, the successor's request is sent ahead as soon as the page's body names it,
        so the API's latency overlaps the page's fsync and commit (see
        :meth:`PageFetcher.send_ahead`); if the page does not commit, it is dropped.
        """
        began = time.monotonic()
        first = pages[0]
        hops = 0
        chain = ChainAhead(self.fetcher)
        try:
            while True:
                go_on = hops < CHAIN_HOPS and time.monotonic() - began < CHAIN_SECONDS
                try:
                    outcome, successor = self._run_pages(job_id, pages, keep_successor=go_on,
                                                         chain=chain)
                except Abandoned:
                    if hops:
                        # Its message names the chain's first page, long committed: the
                        # page it was on must travel on its own.
                        self.dispatcher.send_page(job_id, pages[0])
                    raise
                chain.settle(successor)
                if successor is None:
                    return outcome if not hops else f"{outcome}: pages {first}..{pages[-1]}"
                pages = [successor]
                hops += 1
        finally:
            chain.drop()

    def _run_pages(self, job_id: str, pages: list[int], *, keep_successor: bool = False,
                   chain: ChainAhead | None = None) -> tuple[str, int | None]:
        """One run; with ``keep_successor``, a chain page's successor is returned to be
        run next by the caller instead of being sent, its request sent ahead through
        ``chain`` (which also holds this page's, if the page before sent it)."""
        try:
            spec = self._spec(job_id)
        except JobNotFound:
            log.warning("page.skipped", reason="job not found")
            return "missing", None
        starts = self.ledger.start_pages(job_id, pages, self.worker_name)
        runnable = [page for page in pages if starts[page].run]
        for page in pages:
            if not starts[page].run:
                log.info("page.skipped", page=page, reason=starts[page].reason)
        if not runnable:
            return starts[pages[-1]].reason, None
        rev = max(starts[page].spec_rev for page in runnable)
        if rev != self._specs[job_id][0]:
            # 'harvest retry --job' amended the job since this worker read it.
            spec = self._spec(job_id, rev)
        for page in runnable:
            self.in_flight.add(job_id, page)
        cost = self._costs.setdefault(job_id, PageCost())
        # Pages of a fan-out run are written one after the other and committed together:
        # one fsync and one script for the run (see _commit_written).
        written: list[_Written] | None = [] if (
            len(runnable) > 1 and pagination.is_fan_out(spec)) else None
        claims: list[int] = []
        failures: list[PageFailed] = []
        handed_back: set[int] = set()
        outcome = "skipped"
        # Retries and pauses happen inside the task, which must end well within
        # kombu's visibility timeout, or the broker would deliver the run again.
        give_back_at = time.monotonic() + self.settings.visibility_timeout / 2
        chaining = keep_successor and len(runnable) == 1 and pagination.is_chain(spec)
        try:
            for index, page in enumerate(runnable):
                structlog.contextvars.bind_contextvars(page=page)
                start = starts[page]
                page_began = time.monotonic()
                try:
                    if self.stopping.is_set():
                        raise Abandoned(job_id, page)
                    outcome, claimed, raw_bytes = self._harvest(
                        job_id, spec, page, Link.from_dict(start.link), task_try=start.tries,
                        paused=start.paused, total=start.total, give_back_at=give_back_at,
                        written=written, chain=chain, send_ahead=chaining)
                    cost.add(time.monotonic() - page_began, raw_bytes)
                    if outcome == "written" and written[-1].fetched.following != NOTHING_FOLLOWS:
                        # It tells the job something (a total, an end): the run so far
                        # is committed now, this page last.
                        outcome, claimed = self._commit_written(job_id, spec, written,
                                                                failures)
                except _FailedForGood as failed:
                    failures.append(failed.failure)
                    outcome, claimed = failed.outcome, failed.claimed
                except Abandoned:
                    if written:
                        done, claimed = self._commit_written(job_id, spec, written, failures)
                        claims += claimed
                        if done == "last":
                            self.dispatcher.send_finalize(job_id)
                    self.ledger.release_pages(job_id, runnable[index:], self.worker_name)
                    raise
                claims += claimed
                if len(claims) >= cost.run_pages(self.settings.run_pages):
                    self._send_claims(job_id, claims, cost)
                    claims = []
                if outcome == "last":
                    self.dispatcher.send_finalize(job_id)
                if outcome not in ("committed", "failed", "duplicate", "written"):
                    # The job ended, closed or aborted: the rest of the run is moot (a
                    # page still needed keeps a lease no one renews: the reaper sends it).
                    break
                rest = runnable[index + 1:]
                if rest and index + 1 >= cost.run_pages(self.settings.run_pages):
                    # Past about a second of work: the rest of the run goes back in runs
                    # of about a second each (a page each, if pages are that slow), so
                    # other threads share it. (What the run wrote is committed below, as
                    # at any run's end.)
                    self._hand_back(job_id, rest, handed_back, cost)
                    break
            if written:
                outcome, claimed = self._commit_written(job_id, spec, written, failures)
                claims += claimed
                if outcome == "last":
                    self.dispatcher.send_finalize(job_id)
            successor = claims[0] if (
                keep_successor and outcome == "committed" and not failures
                and len(claims) == 1 and pagination.is_chain(spec)
                and not self.stopping.is_set()) else None
            if successor is not None:
                claims = []
        finally:
            # Pages written but not committed keep their leases until the end of the run.
            for page in runnable:
                if page not in handed_back:
                    self.in_flight.remove(job_id, page)
            # Pages claimed so far are leased to the queue: send them whatever happens,
            # or they would wait for the reaper.
            if claims:
                self._send_claims(job_id, claims, cost)
        if failures:
            raise _run_failure(failures) from None
        return outcome, successor

    def _commit_written(self, job_id: str, spec: JobSpec, written: list[_Written],
                        failures: list[PageFailed]) -> tuple[str, list[int]]:
        """Commit the run's pages written so far: one fsync, one script. If the fsync
        fails (a full disk), none of them is committed: their bytes are cut off and
        each page is harvested again on its own, with its retries and failure."""
        pages = list(written)
        written.clear()
        try:
            self.fetcher.sync(job_id)
        except StorageError as exc:
            log.warning("run.sync_failed", message=str(exc), pages=[w.page for w in pages])
            self.fetcher.cut_back(job_id, pages[0].fetched.commit)
            return self._harvest_alone(job_id, spec, pages, failures)
        plain = [w for w in pages if w.fetched.following == NOTHING_FOLLOWS]
        told = [w for w in pages if w.fetched.following != NOTHING_FOLLOWS]  # the last, if any
        outcome, claimed = "committed", []
        if plain:
            outcome, claimed, by_page = self.ledger.commit_run(
                job_id, [w.fetched.commit for w in plain], requests=sum(w.sent for w in plain))
            for w in reversed(plain):  # the segment's last page first, so each can be cut
                if by_page[w.page] != "committed":
                    self.fetcher.discard(job_id, w.fetched.commit)
            for w in plain:
                commit = w.fetched.commit
                log.info("page." + by_page[w.page], page=w.page, raw_bytes=commit.raw_bytes,
                         gz_bytes=commit.length, requests=w.sent)
        for w in told:
            if outcome not in ("committed", "duplicate"):
                self.fetcher.discard(job_id, w.fetched.commit)
                break
            outcome, own = self._commit(job_id, spec, w.page, w.link, w.fetched, w.sent)
            claimed = claimed + own
        return outcome, claimed

    def _hand_back(self, job_id: str, rest: list[int], handed_back: set[int],
                   cost: PageCost) -> None:
        """Give ``rest`` back in runs sized by the job's cost per page. (Single pages
        whatever the cost made a run that overran its budget by a page or two cost a
        message per page, which made the next runs slower still.)"""
        for page in rest:
            # No longer this task's: the heartbeat must not renew their leases.
            self.in_flight.remove(job_id, page)
        handed_back.update(rest)
        given = self.ledger.release_pages(job_id, rest, self.worker_name)
        log.info("run.handed_back", pages=len(given))
        self._send_claims(job_id, given, cost)

    def _harvest_alone(self, job_id: str, spec: JobSpec, pages: list[_Written],
                       failures: list[PageFailed]) -> tuple[str, list[int]]:
        claims: list[int] = []
        outcome = "committed"
        give_back_at = time.monotonic() + self.settings.visibility_timeout / 2
        for w in pages:
            structlog.contextvars.bind_contextvars(page=w.page)
            try:
                outcome, claimed, _ = self._harvest(
                    job_id, spec, w.page, w.link, task_try=w.task_try, paused=False,
                    total=w.total, give_back_at=give_back_at, written=None)
            except _FailedForGood as failed:
                failures.append(failed.failure)
                outcome, claimed = failed.outcome, failed.claimed
            claims += claimed
            if outcome not in ("committed", "failed", "duplicate"):
                break
        return outcome, claims

    def _send_claims(self, job_id: str, claims: list[int], cost: PageCost) -> None:
        self.dispatcher.send_pages(job_id, claims,
                                   run_pages=cost.run_pages(self.settings.run_pages))

    def close(self) -> None:
        self.fetcher.close()

    # ------------------------------------------------------------- page loop

    def _harvest(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
                 task_try: int, *, paused: bool, total: int | None, give_back_at: float,
                 written: list[_Written] | None = None, chain: ChainAhead | None = None,
                 send_ahead: bool = False) -> tuple[str, list[int], int]:
        """One page to its end: (outcome, pages claimed, raw bytes); a page failed for
        good raises _FailedForGood. With ``written`` (a fan-out run), the page is only
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
                  written: list[_Written] | None, ahead: Ahead | None,
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
                sent += getattr(exc, "attempts", 0) or 1
                if getattr(exc, "retryable", True) and attempt <= http.retries:
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
                return (*self._commit(job_id, spec, page, link, fetched, sent), raw_bytes)
            written.append(_Written(page, link, task_try, total, fetched, sent))
            return "written", [], raw_bytes

    def _limited(self, job_id: str, spec: JobSpec) -> bool:
        """Whether a request must pass the limiter. With no limits set, the limiter only
        enforces Retry-After pauses: skip its round trip unless this process's view of
        the job (at most 0.1 s old) shows one may hold."""
        return spec.limits.rate_per_second is not None \
            or spec.limits.max_in_flight is not None or self.limiter.maybe_paused(job_id)

    def _commit(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
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

    def _wait_to_retry(self, job_id: str, page: int, spec: JobSpec, exc: Exception,
                       attempt: int, give_back_at: float) -> None:
        delay = self._delay_before_retry(job_id, spec, exc, attempt)
        if time.monotonic() + delay + spec.http.page_deadline > give_back_at:
            raise Abandoned(job_id, page)  # requeued, its tries kept
        log.warning("page.retry", error=type(exc).__name__, message=str(exc),
                    delay=round(delay, 3), status=getattr(exc, "status", None))
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
        raise _FailedForGood(PageFailed(job_id, page, error_class, record["message"]),
                             outcome, claimed)

    @staticmethod
    def _closes_on_failure(spec: JobSpec, page: int) -> bool:
        # A failed chain page names no successor; nor does a failed page 1 of a
        # job that learns its total from page 1. retry reopens both.
        return pagination.is_chain(spec) or (page == 1 and pagination.learns_total(spec))

    def _spec(self, job_id: str, rev: int | None = None) -> JobSpec:
        cached = self._specs.get(job_id)
        if cached is None or (rev is not None and cached[0] != rev):
            spec = self.ledger.spec(job_id)
            self._specs[job_id] = (rev if rev is not None else -1, spec)
            return spec
        return cached[1]


def _run_failure(failures: list[PageFailed]) -> PageFailed:
    """What a run's task raises: its first failed page, naming any others."""
    first = failures[0]
    if len(failures) == 1:
        return first
    others = ", ".join(str(f.page) for f in failures[1:])
    return PageFailed(first.job_id, first.page, first.error_class,
                      f"{first.message} (pages {others} of this run failed too)")


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} chars)"


def _exception_text(exc: BaseException) -> str:
    return scrub(_clip(str(exc) or type(exc).__name__))
