"""One attempt at one page: resolve its request, pass the limiter, send it, stream
the body into the thread's segment, and read what the page says follows.

A :class:`PageFetcher` lives once per worker process and is shared by its
threads; each thread keeps its own Session and segment per job (see
:class:`_ThreadResources`), so threads never share a socket or a file. The
page's attempts around it (retries, commit, failure) are
:mod:`harvester.engine.attempts`'; what a response says follows is
:mod:`harvester.core.following`'s.
"""

from __future__ import annotations

import json
import secrets as token_source
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone

import requests

from ..core import pagination
from ..core.following import Following, what_follows
from ..core.layout import SEGMENTS_DIR, Commit
from ..core.origin import Origin
from ..core.pagebody import PageBody, is_json_lines
from ..core.pagination import Link
from ..core.secrets import MissingSecret, SecretSet, resolve
from ..core.spec import JobSpec
from ..edges.fetch import (
    ResolvedRequest,
    Response,
    build_session,
    check_sendable,
    display_url,
    job_origin,
    open_page,
    read_body,
)
from ..edges.ledger import Ledger
from ..edges.store import Store, open_store
from ..edges.store.base import Segment
from ..errors import Abandoned, MissingSecretError, PageError
from ..settings import Settings
from .limits import RequestLimiter


@dataclass(frozen=True)
class Fetched:
    commit: Commit
    following: Following
    requests_sent: int


@dataclass
class _JobResources:
    session: requests.Session
    segment: Segment | None = None
    segment_id: int = 0
    # Pages written with sync=False since the last sync(), and segments replaced
    # while holding some: sync() must make those durable too (or fail).
    unsynced_pages: int = 0
    retired: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class _Prepared:
    """A page's request, secrets filled in: never stored, never logged."""

    page: int
    url: str  # the display URL (templates left as ${...})
    resolved: ResolvedRequest
    headers: dict[str, str]
    secrets: SecretSet
    origin: Origin


@dataclass
class _Sent:
    """A request sent, its response's body not yet read: holds a limiter slot."""

    prepared: _Prepared
    deadline: float
    response: Response
    _opened: AbstractContextManager[Response]
    _slot: str | None
    _limiter: RequestLimiter

    def close(self) -> None:
        try:
            self._opened.__exit__(None, None, None)
        finally:
            self._limiter.release(self._slot)


class Ahead:
    """A page's request sent ahead on a helper thread (:meth:`PageFetcher.send_ahead`):
    taken once by the page's first attempt, or cancelled."""

    def __init__(self, page: int, link: Link, future: Future[_Sent]):
        self.page = page
        self.link = link
        self._future = future
        self._done = False

    def serves(self, page: int, link: Link | None) -> bool:
        return not self._done and page == self.page and link == self.link

    def take(self) -> _Sent:
        """The sent request, or the error sending it raised (the attempt's own)."""
        self._done = True
        return self._future.result()

    def cancel(self) -> None:
        """Drop it: wait until it is sent (the thread's Session is not free before),
        then close its response unread. No-op once taken."""
        if self._done:
            return
        self._done = True
        try:
            sent = self._future.result()
        except Exception:  # noqa: BLE001 - an error of a request no attempt will use
            return
        sent.close()


class _ThreadResources(threading.local):
    def __init__(self) -> None:
        self.jobs: OrderedDict[str, _JobResources] = OrderedDict()


class PageFetcher:
    MAX_JOBS_PER_THREAD = 4

    def __init__(self, ledger: Ledger, settings: Settings, limiter: RequestLimiter, *,
                 worker_name: str, stopping: threading.Event):
        self.ledger = ledger
        self.settings = settings
        self.limiter = limiter
        self.worker_name = worker_name
        self.stopping = stopping
        self._local = _ThreadResources()
        self._secret_sets: dict[str, SecretSet] = {}
        self._origins: dict[str, Origin] = {}
        self._stores: dict[str, Store] = {}
        self._ahead_pool: ThreadPoolExecutor | None = None
        self._ahead_lock = threading.Lock()

    def fetch(self, job_id: str, spec: JobSpec, page: int, link: Link | None, *,
              limited: bool = True, total: int | None = None, sync: bool = True,
              ahead: Ahead | None = None,
              on_following: Callable[[Following], None] | None = None) -> Fetched:
        """Fetch ``page`` once into this thread's segment (not yet committed).

        ``total`` is the job's page count when known (to tell a short last page
        from a page the API cut short). With ``sync`` False the page's bytes are not
        yet durable: :meth:`sync` must run before it is committed. ``ahead``: this
        page's request, already sent by :meth:`send_ahead` (its response, or the error
        sending it raised, is this attempt's). ``on_following`` hears what the page
        says follows as soon as its body is checked, before its bytes are made
        durable. Raises :class:`PageError` subclasses.
        """
        resources = self._resources(job_id, spec)
        sent = ahead.take() if ahead is not None else self._send(
            job_id, spec, self._prepare(job_id, spec, page, link), resources, limited)
        return self._receive(job_id, spec, page, link, sent, resources, total, sync,
                             on_following)

    def send_ahead(self, job_id: str, spec: JobSpec, page: int, link: Link, *,
                   limited: bool) -> Ahead | None:
        """Send ``page``'s request on a helper thread while this thread goes on (a
        chain's next page, while its predecessor is made durable and committed), so
        that the API's latency overlaps that work. The response stays unread until
        :meth:`fetch` takes it or :meth:`Ahead.cancel` drops it. None when the request
        cannot be built (the page's own attempt then says why)."""
        try:
            prepared = self._prepare(job_id, spec, page, link)
        except PageError:
            return None
        resources = self._resources(job_id, spec)
        with self._ahead_lock:
            if self._ahead_pool is None:
                self._ahead_pool = ThreadPoolExecutor(thread_name_prefix="harvest-ahead")
            pool = self._ahead_pool
        return Ahead(page, link, pool.submit(self._send, job_id, spec, prepared, resources,
                                             limited))

    def _prepare(self, job_id: str, spec: JobSpec, page: int, link: Link | None) -> _Prepared:
        """The page's request with its secrets filled in, checked sendable."""
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
                f"environment variable {exc.args[0]} is not set on worker {self.worker_name}:"
                " export it where the workers run (with --local, where you run harvest),"
                " then retry",
                url=url) from None
        try:
            check_sendable(headers, resolved.url)
        except PageError as exc:
            exc.url = url
            raise
        return _Prepared(page, url, resolved, headers, secrets, origin)

    def _send(self, job_id: str, spec: JobSpec, prepared: _Prepared, resources: _JobResources,
              limited: bool) -> _Sent:
        """Pass the limiter and send the request: its response, headers read, body not."""
        deadline = time.monotonic() + spec.http.page_deadline
        try:
            slot = self.limiter.acquire(job_id, spec.limits, self.stopping.is_set) \
                if limited else None
        except InterruptedError:
            raise Abandoned(job_id, prepared.page) from None
        try:
            opened = open_page(resources.session, prepared.resolved, headers=prepared.headers,
                               http=spec.http, url=prepared.url, secrets=prepared.secrets,
                               origin=prepared.origin, allow_hosts=spec.pagination.allow_hosts)
            response = opened.__enter__()
        except BaseException:
            self.limiter.release(slot)
            raise
        return _Sent(prepared, deadline, response, opened, slot, self.limiter)

    def _receive(self, job_id: str, spec: JobSpec, page: int, link: Link | None, sent: _Sent,
                 resources: _JobResources, total: int | None, sync: bool,
                 on_following: Callable[[Following], None] | None) -> Fetched:
        """Stream the sent request's body into the segment; closes the response."""
        url, secrets, response = sent.prepared.url, sent.prepared.secrets, sent.response
        try:
            segment = self._segment(job_id, spec, resources)
            member = segment.begin_page(spec.output.compress_level)
            try:
                content_type = response.headers.get("Content-Type")
                body = PageBody(
                    write=member.write, records_mode=spec.output.mode == "records",
                    records_path=spec.records_path,
                    value_paths=pagination.wanted_values(spec, page),
                    count_records=pagination.counts_records(spec),
                    json_lines=is_json_lines(content_type, spec.output.body_format),
                    line_prefix=_line_prefix(page, url, response.status),
                    content_type=content_type)
                try:
                    for chunk in read_body(response, deadline=sent.deadline, http=spec.http,
                                           url=url, secrets=secrets):
                        if self.stopping.is_set():
                            raise Abandoned(job_id, page)
                        body.feed(chunk)
                    result = body.finish()
                    following = what_follows(spec, page, link, total, url=response.url,
                                             headers=response.headers, result=result,
                                             secrets=secrets)
                except PageError as exc:
                    exc.url, exc.status = url, response.status
                    exc.attempts = exc.attempts or response.attempts
                    raise
                if on_following is not None:
                    on_following(following)
                location = member.commit(sync=sync)
                if not sync:
                    resources.unsynced_pages += 1
            except BaseException:
                member.abort()
                raise
        finally:
            sent.close()
        commit = Commit(page=page, segment=resources.segment_id, offset=location.offset,
                        length=location.length, raw_bytes=location.raw_bytes, lines=result.lines)
        return Fetched(commit=commit, following=following, requests_sent=response.attempts)

    def sync(self, job_id: str) -> None:
        """Make every page this thread wrote for ``job_id`` durable (one fsync, or one
        upload), in a segment replaced meanwhile too; StorageError if any cannot be."""
        resources = self._local.jobs.get(job_id)
        if resources is None:
            return
        retired, resources.retired = resources.retired, []
        try:
            for old in retired:
                old.sync()
            if resources.segment is not None:
                resources.segment.sync()
        finally:
            # Synced, or lost: the caller commits them now or harvests them again.
            resources.unsynced_pages = 0
            for old in retired:
                old.close()

    def discard(self, job_id: str, commit: Commit) -> None:
        """Cut a page written but never committed (a duplicate, a closed job) off again.
        Only the segment's last page can be cut; one before it stays as bytes no
        commit references, which sealing never copies."""
        resources = self._local.jobs.get(job_id)
        segment = resources.segment if resources else None
        if segment is not None and resources.segment_id == commit.segment \
                and segment.size == commit.offset + commit.length:
            segment.truncate(commit.offset)

    def cut_back(self, job_id: str, commit: Commit) -> None:
        """Drop ``commit``'s page and every byte written after it (a run whose one
        fsync failed: none of its pages may be committed)."""
        resources = self._local.jobs.get(job_id)
        segment = resources.segment if resources else None
        if segment is not None and resources.segment_id == commit.segment \
                and segment.size >= commit.offset:
            segment.truncate(commit.offset)

    def close(self) -> None:
        for resources in self._local.jobs.values():
            _close(resources)
        self._local.jobs.clear()
        if self._ahead_pool is not None:
            self._ahead_pool.shutdown(wait=True)

    # ----------------------------------------------------- per-job, per-thread

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

    def _store(self, job_id: str, spec: JobSpec) -> Store:
        found = self._stores.get(job_id)
        if found is None:
            found = self._stores[job_id] = open_store(spec.output.dir)
        return found

    def _segment(self, job_id: str, spec: JobSpec, resources: _JobResources) -> Segment:
        segment = resources.segment
        if segment is not None and not segment.unlinked:
            return segment
        if segment is not None:
            if resources.unsynced_pages and not segment.settled:
                resources.retired.append(segment)  # its pages wait for sync()
            else:
                segment.close()
        resources.segment = None
        relative = (f"{SEGMENTS_DIR}/{job_id}/{self.worker_name}-{threading.get_native_id()}-"
                    f"{token_source.token_hex(3)}.seg")
        # Registered first: a segment whose id the ledger does not know is never used.
        segment_id = self.ledger.register_segment(job_id, relative)
        resources.segment = self._store(job_id, spec).segment_writer(
            relative, fsync=self.settings.fsync)
        resources.segment_id = segment_id
        return resources.segment


def _close(resources: _JobResources) -> None:
    resources.session.close()
    if resources.segment is not None:
        resources.segment.close()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _line_prefix(page: int, url: str, status: int) -> bytes:
    return (f'{{"page":{page},"url":{json.dumps(url)},"status":{status},'
            f'"fetched_at":"{now_iso()}","body":').encode()


def page_url(spec: JobSpec, page: int, link: Link | None) -> str | None:
    """The display URL of a page, for a failure record; None if it cannot be built."""
    try:
        return display_url(pagination.request_for(spec, page, link))
    except Exception:  # noqa: BLE001 - a failure record must not fail on its URL
        return None

