"""One page, start to finish, on a worker: lease, fetch, stream to a segment,
check, commit, hand the queue its next pages.

A :class:`PageRunner` lives once per worker process and is shared by its
threads; each thread keeps its own Session and segment per job (see
:class:`_ThreadResources`), so threads never share a socket or a file.
"""

from __future__ import annotations

import json
import os
import random
import secrets as token_source
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import requests
import structlog

from . import pagination
from .backoff import compute_backoff
from .errors import (Abandoned, HTTPStatusError, InternalError, JobNotFound, MissingSecretError,
                     PageError, PaginationError, StorageError)
from .fetch import (ResolvedRequest, build_session, check_sendable, display_url, job_origin,
                    open_page, read_body)
from .job import JobSpec
from .ledger import Commit, Ledger
from .limits import RequestLimiter
from .origin import Origin
from .pagebody import PageBody, is_json_lines
from .pagination import Link
from .secrets import MissingSecret, SecretSet, resolve, scrub
from .settings import Settings
from .storage import SEGMENTS_DIR, SegmentWriter

log = structlog.get_logger("harvester.page")


MAX_RETRY_AFTER = 900.0


class Dispatcher(Protocol):
    """How the library enqueues work; the Celery app provides the real one."""

    def send_page(self, job_id: str, page: int, *, urgent: bool = False) -> None: ...

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


@dataclass
class _JobResources:
    session: requests.Session
    segment: SegmentWriter | None = None
    segment_id: int = 0


class _ThreadResources(threading.local):
    def __init__(self) -> None:
        self.jobs: OrderedDict[str, _JobResources] = OrderedDict()


@dataclass(frozen=True)
class _Fetched:
    commit: Commit
    total: int | None  # the job's page count, when this page tells it
    close: bool  # no page can follow this one
    next_link: Link | None  # the successor of a chained page
    end_reason: str | None
    requests_sent: int


class PageRunner:
    MAX_JOBS_PER_THREAD = 4

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
        self._local = _ThreadResources()
        self._specs: dict[str, JobSpec] = {}
        self._secret_sets: dict[str, SecretSet] = {}
        self._origins: dict[str, Origin] = {}

    # ------------------------------------------------------------------ entry

    def run(self, job_id: str, page: int) -> str:
        """Harvest ``page`` of ``job_id`` once; returns the outcome's name."""
        try:
            spec = self._spec(job_id)
        except JobNotFound:
            log.warning("page.skipped", reason="job not found")
            return "missing"
        start = self.ledger.start_page(job_id, page, self.worker_name)
        if not start.run:
            log.info("page.skipped", reason=start.reason)
            return start.reason
        self.in_flight.add(job_id, page)
        try:
            outcome, claimed = self._harvest(job_id, spec, page, Link.from_dict(start.link),
                                             task_try=start.tries, paused=start.paused)
        except Abandoned:
            self.ledger.release_page(job_id, page, self.worker_name)
            raise
        finally:
            self.in_flight.remove(job_id, page)
        for following in claimed:
            self.dispatcher.send_page(job_id, following)
        if outcome == "last":
            self.dispatcher.send_finalize(job_id)
        return outcome

    def close(self) -> None:
        for resources in self._local.jobs.values():
            _close(resources)
        self._local.jobs.clear()

    # ------------------------------------------------------------- page loop

    def _harvest(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
                 task_try: int, paused: bool = False) -> tuple[str, list[int]]:
        http = spec.http
        sent = 0
        attempt = 0
        # Retries and pauses happen inside the task; it must end well within kombu's
        # visibility timeout, or the broker would deliver the page a second time.
        give_back_at = time.monotonic() + self.settings.visibility_timeout / 2
        while True:
            attempt += 1
            structlog.contextvars.bind_contextvars(attempt=attempt, task_try=task_try)
            try:
                # With no limits set, the limiter only enforces Retry-After pauses:
                # skip its round trip when start_page saw none and this is the first try.
                limited = paused or attempt > 1 or spec.limits.rate_per_second is not None \
                    or spec.limits.max_in_flight is not None
                fetched = self._fetch(job_id, spec, page, link, limited=limited)
            except Abandoned:
                raise
            except (PageError, StorageError) as exc:
                sent += getattr(exc, "attempts", 0) or 1
                if self._retryable(exc, spec) and attempt <= http.retries:
                    delay = self._delay_before_retry(job_id, spec, exc, attempt)
                    if time.monotonic() + delay + http.page_deadline > give_back_at:
                        raise Abandoned(job_id, page)  # requeued, its tries kept
                    log.warning("page.retry", error=type(exc).__name__, message=str(exc),
                                delay=round(delay, 3), status=getattr(exc, "status", None))
                    if self.stopping.wait(delay):
                        raise Abandoned(job_id, page)
                    continue
                return self._fail(job_id, spec, page, link, exc, sent)
            except Exception as exc:  # noqa: BLE001 - any surprise fails the page, never hangs the job
                log.exception("page.unexpected_error")
                return self._fail(job_id, spec, page, link, InternalError(
                    f"unexpected {type(exc).__name__} inside the page: {_exception_text(exc)}"
                    " (a bug in the harvester: please report it with the worker log)",
                    error_class=type(exc).__name__), sent + 1)
            sent += fetched.requests_sent
            following = fetched.next_link
            outcome, claimed = self.ledger.commit(
                job_id, fetched.commit, total=fetched.total, close=fetched.close,
                next_link=following.to_dict() if following else None,
                identity=following.identity if following else None)
            if outcome == "repeated":
                self._discard_last(job_id, fetched.commit)
                what = following.cursor if following.cursor is not None else following.url
                return self._fail(job_id, spec, page, link, PaginationError(
                    f"the next {'cursor' if following.cursor is not None else 'URL'}"
                    f" {_clip(what.render())!r} was already followed earlier in this job: the"
                    " API is looping; stopping here instead"), sent)
            if fetched.end_reason:
                log.info("chain.ended", reason=fetched.end_reason)
            if outcome in ("duplicate", "closed"):
                # Someone else committed it, or the job was cancelled: the bytes
                # we wrote are never referenced, so give the space back.
                self._discard_last(job_id, fetched.commit)
            log.info("page." + ("committed" if outcome in ("committed", "last") else outcome),
                     raw_bytes=fetched.commit.raw_bytes, gz_bytes=fetched.commit.length,
                     requests=sent)
            return outcome, claimed

    @staticmethod
    def _retryable(exc: Exception, spec: JobSpec) -> bool:
        if isinstance(exc, HTTPStatusError):
            return exc.status in spec.http.retry_statuses
        return getattr(exc, "retryable", True)

    def _delay_before_retry(self, job_id: str, spec: JobSpec, exc: Exception,
                            attempt: int) -> float:
        """Backoff with jitter; a 429/503 Retry-After pauses the whole job instead."""
        http = spec.http
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None and getattr(exc, "status", None) in (429, 503):
            pause = min(retry_after, self.max_pause)
            self.limiter.pause(job_id, pause)
            log.warning("job.paused", seconds=round(pause, 3), status=exc.status)
            # The limiter holds every request until the pause ends; this worker
            # adds a little jitter of its own on top, never instead.
            return random.uniform(0, min(1.0, http.backoff_factor))
        return compute_backoff(attempt, factor=http.backoff_factor, maximum=http.backoff_max)

    def _fail(self, job_id: str, spec: JobSpec, page: int, link: Link | None, exc: Exception,
              sent: int) -> tuple[str, list[int]]:
        status = getattr(exc, "status", None)
        error_class = exc.error_class if isinstance(exc, InternalError) else type(exc).__name__
        record = {
            "page": page,
            "url": getattr(exc, "url", None) or _page_url(spec, page, link),
            "attempts": sent,
            "status": status,
            "error": getattr(exc, "reason", None) if status is None else str(status),
            "error_class": error_class,
            "message": scrub(str(exc)),
            "failed_at": _now_iso(),
            "worker": self.worker_name,
        }
        record["error"] = record["error"] or error_class
        log.error("page.failed", error=record["error_class"], message=record["message"],
                  requests=sent)
        return self.ledger.fail(job_id, page, record, close=self._closes_on_failure(spec, page))

    @staticmethod
    def _closes_on_failure(spec: JobSpec, page: int) -> bool:
        # A failed chain page names no successor; nor does a failed page 1 of a
        # job that learns its total from page 1. retry reopens both.
        return pagination.is_chain(spec) or (page == 1 and pagination.total_path(spec) is not None)

    # ------------------------------------------------------------ the fetch

    def _fetch(self, job_id: str, spec: JobSpec, page: int, link: Link | None,
               *, limited: bool = True) -> _Fetched:
        request = pagination.request_for(spec, page, link)
        url = display_url(request)
        try:
            secrets = self._secrets(job_id, spec)
            resolved = ResolvedRequest(
                method=request.method, url=request.url.fill(), params=resolve(request.params),
                json=resolve(request.json), from_api=link is not None and link.url is not None)
            headers = {"Accept": "application/json", **resolve(spec.headers)}
            origin = self._origin(job_id, spec)
        except MissingSecret as exc:
            raise MissingSecretError(
                f"environment variable {exc.args[0]} is not set on worker {self.worker_name}",
                url=url) from None
        try:
            check_sendable(headers, resolved.url)
        except PageError as exc:
            exc.url = url
            raise
        resources = self._resources(job_id, spec)
        deadline = time.monotonic() + spec.http.page_deadline

        try:
            slot = self.limiter.acquire(job_id, spec.limits, self.stopping.is_set) \
                if limited else None
        except InterruptedError:
            raise Abandoned(job_id, page) from None
        try:
            return self._request(job_id, spec, page, url, resolved, headers, secrets, origin,
                                 resources, deadline)
        finally:
            self.limiter.release(slot)

    def _request(self, job_id: str, spec: JobSpec, page: int, url: str,
                 resolved: ResolvedRequest, headers: dict[str, str], secrets: SecretSet,
                 origin: Origin, resources: _JobResources, deadline: float) -> _Fetched:
        with open_page(resources.session, resolved, headers=headers, http=spec.http, url=url,
                       secrets=secrets, origin=origin,
                       allow_hosts=spec.pagination.allow_hosts) as response:
            segment = self._segment(job_id, spec, resources)
            member = segment.begin_page(spec.output.compress_level)
            try:
                body = PageBody(
                    write=member.write, records_mode=spec.output.mode == "records",
                    records_path=spec.records_path,
                    value_paths=pagination.wanted_values(spec, page),
                    count_records=pagination.counts_records(spec),
                    json_lines=is_json_lines(response.headers.get("Content-Type")),
                    line_prefix=_line_prefix(page, url, response.status))
                for chunk in read_body(response, deadline=deadline, http=spec.http, url=url,
                                       secrets=secrets):
                    if self.stopping.is_set():
                        raise Abandoned(job_id, page)
                    body.feed(chunk)
                try:
                    result = body.finish()
                except PageError as exc:
                    exc.url, exc.status = url, response.status
                    raise
                fetched = self._what_follows(spec, page, url, resolved.url, response, result,
                                             secrets)
                location = member.commit()
            except BaseException:
                member.abort()
                raise
        commit = Commit(page=page, segment=resources.segment_id, offset=location.offset,
                        length=location.length, raw_bytes=location.raw_bytes, lines=result.lines)
        return _Fetched(commit=commit, requests_sent=response.attempts, **fetched)

    @staticmethod
    def _what_follows(spec: JobSpec, page: int, url: str, request_url: str, response: Any,
                      result: Any, secrets: SecretSet) -> dict[str, Any]:
        if pagination.is_fan_out(spec):
            wanted = pagination.total_path(spec) if page == 1 else None
            if not wanted:
                return {"total": None, "close": False, "next_link": None, "end_reason": None}
            if wanted not in result.values:
                raise PaginationError(f"page 1 has no value at {wanted!r}", url=url,
                                      status=response.status)
            # A total learnt from page 1 is final: no page beyond it can appear.
            total = pagination.total_from_value(spec, result.values[wanted])
            return {"total": total, "close": True, "next_link": None, "end_reason": None}
        try:
            following = pagination.next_after(spec, page, response.url or request_url,
                                              result.values, response.headers.get("Link"),
                                              result.records, secrets)
        except PageError as exc:
            exc.url, exc.status = url, response.status
            raise
        if following.link is None:
            return {"total": None, "close": True, "next_link": None,
                    "end_reason": following.end_reason}
        return {"total": page + 1, "close": False, "next_link": following.link,
                "end_reason": None}

    def _discard_last(self, job_id: str, commit: Commit) -> None:
        resources = self._local.jobs.get(job_id)
        segment = resources.segment if resources else None
        if segment is not None and segment.size == commit.offset + commit.length:
            segment.truncate(commit.offset)

    # ----------------------------------------------------- per-thread state

    def _spec(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            spec = self._specs[job_id] = self.ledger.spec(job_id)
        return spec

    def _secrets(self, job_id: str, spec: JobSpec) -> SecretSet:
        """The job's resolved secrets on this worker (the environment is fixed)."""
        found = self._secret_sets.get(job_id)
        if found is None:
            found = self._secret_sets[job_id] = SecretSet.for_job(spec.templated, spec.url)
        return found

    def _origin(self, job_id: str, spec: JobSpec) -> Origin:
        found = self._origins.get(job_id)
        if found is None:
            found = self._origins[job_id] = job_origin(resolve(spec.url))
        return found

    def _resources(self, job_id: str, spec: JobSpec) -> _JobResources:
        jobs = self._local.jobs
        resources = jobs.get(job_id)
        if resources is None:
            resources = jobs[job_id] = _JobResources(session=build_session(spec.http, spec.url))
            while len(jobs) > self.MAX_JOBS_PER_THREAD:
                _close(jobs.popitem(last=False)[1])
        jobs.move_to_end(job_id)
        return resources

    def _segment(self, job_id: str, spec: JobSpec, resources: _JobResources) -> SegmentWriter:
        segment = resources.segment
        if segment is not None and not segment.unlinked:
            return segment
        if segment is not None:
            segment.close()
        resources.segment = None
        relative = (f"{SEGMENTS_DIR}/{job_id}/{self.worker_name}-{threading.get_native_id()}-"
                    f"{token_source.token_hex(3)}.seg")
        # Registered first: a segment whose id the ledger does not know is never used.
        segment_id = self.ledger.register_segment(job_id, relative)
        resources.segment = SegmentWriter(Path(spec.output.dir) / relative,
                                          fsync=self.settings.fsync)
        resources.segment_id = segment_id
        return resources.segment


def _close(resources: _JobResources) -> None:
    resources.session.close()
    if resources.segment is not None:
        resources.segment.close()


def _page_url(spec: JobSpec, page: int, link: Link | None) -> str | None:
    try:
        return display_url(pagination.request_for(spec, page, link))
    except Exception:  # noqa: BLE001 - a failure record must not fail on its URL
        return None


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}...({len(text):,} chars)"


def _exception_text(exc: BaseException) -> str:
    return scrub(_clip(str(exc) or type(exc).__name__))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line_prefix(page: int, url: str, status: int) -> bytes:
    return (f'{{"page":{page},"url":{json.dumps(url)},"status":{status},'
            f'"fetched_at":"{_now_iso()}","body":').encode()
