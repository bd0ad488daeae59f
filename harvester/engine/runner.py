"""A run of pages on a worker: lease them, harvest each, commit them together, and
hand the queue its next pages; a chain task going on with the page it names.

A :class:`PageRunner` lives once per worker process and is shared by its threads.
One page's attempts, retries, commit or failure are
:class:`~harvester.engine.attempts.PageAttempts`'; one attempt is
:class:`~harvester.engine.fetcher.PageFetcher`'s.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Protocol

import structlog

from ..core import pagination
from ..core.following import NOTHING_FOLLOWS
from ..core.pagination import Link
from ..core.runs import PageCost
from ..core.spec import JobSpec
from ..edges.ledger import Ledger
from ..errors import Abandoned, JobNotFound, PageFailed, StorageError
from ..settings import Settings
from .attempts import FailedForGood, PageAttempts, Written
from .chain import ChainAhead
from .fetcher import PageFetcher
from .limits import RequestLimiter

log = structlog.get_logger("harvester.page")

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
        self.stopping = threading.Event()
        self.worker_name = worker_name or f"{socket.gethostname()}-{os.getpid()}"
        self.fetcher = PageFetcher(ledger, settings, self.limiter, worker_name=self.worker_name,
                                   stopping=self.stopping)
        self.attempts = PageAttempts(ledger, dispatcher, settings, self.fetcher, self.limiter,
                                     worker_name=self.worker_name, stopping=self.stopping)
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
        written: list[Written] | None = [] if (
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
                    outcome, claimed, raw_bytes = self.attempts.harvest(
                        job_id, spec, page, Link.from_dict(start.link), task_try=start.tries,
                        paused=start.paused, total=start.total, give_back_at=give_back_at,
                        written=written, chain=chain, send_ahead=chaining)
                    cost.add(time.monotonic() - page_began, raw_bytes)
                    if outcome == "written" and written[-1].fetched.following != NOTHING_FOLLOWS:
                        # It tells the job something (a total, an end): the run so far
                        # is committed now, this page last.
                        outcome, claimed = self._commit_written(job_id, spec, written,
                                                                failures)
                except FailedForGood as failed:
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

    def _commit_written(self, job_id: str, spec: JobSpec, written: list[Written],
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
            outcome, own = self.attempts.commit(job_id, spec, w.page, w.link, w.fetched, w.sent)
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

    def _harvest_alone(self, job_id: str, spec: JobSpec, pages: list[Written],
                       failures: list[PageFailed]) -> tuple[str, list[int]]:
        claims: list[int] = []
        outcome = "committed"
        give_back_at = time.monotonic() + self.settings.visibility_timeout / 2
        for w in pages:
            structlog.contextvars.bind_contextvars(page=w.page)
            try:
                outcome, claimed, _ = self.attempts.harvest(
                    job_id, spec, w.page, w.link, task_try=w.task_try, paused=False,
                    total=w.total, give_back_at=give_back_at, written=None)
            except FailedForGood as failed:
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

