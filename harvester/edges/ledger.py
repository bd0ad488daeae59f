"""The job ledger in Redis: per-page state, the queue window and the commit point.

Keys of job ``J`` (the ``{J}`` hash tag keeps them in one cluster slot)::

    hv:{J}:job        hash    spec, state, total, open, next_page, window, counts, times
    hv:{J}:c:<n>      hash    page -> "segment:offset:length:raw:lines[|claimed a-b,c]",
                              128 pages per hash so Redis keeps each a compact listpack;
                              once the job is sealed, one field "done": a bitmap of the
                              bucket's committed pages (hex, see lua/compact.lua)
    hv:{J}:buckets    set     the <n> of every c:<n> hash that exists, so walking the
                              commits costs what was committed, not what was announced
    hv:{J}:segs       hash    segment id -> path relative to the output dir
    hv:{J}:sealed     set     segment ids already sealed into parts
    hv:{J}:failed     hash    page -> failure record (JSON)
    hv:{J}:tries      hash    page -> tasks started for it (while unresolved)
    hv:{J}:lease      zset    page -> lease end (ms) for every queued or running page
    hv:{J}:todo       list    pages to claim before the sequential plan
    hv:{J}:links      hash    page -> how to request it (cursor or URL), for chained
                              pages not yet committed (so retry resumes a chain)
    hv:{J}:seen       set     identities of every cursor/next URL followed (loop check)
    hv:{J}:claims     hash    page -> pages its failure claimed (to replay a lost reply)
    hv:{J}:owner      hash    page -> the worker running it (unset while only queued)
    hv:{J}:bucket     hash    the job's request-rate token bucket ([limits])
    hv:{J}:inflight   zset    request slots held ([limits] max_in_flight)
    hv:jobs           zset    job id -> creation time
    hv:active         set     jobs not yet final (the reaper walks these)

A final job's keys expire after ``keep_seconds`` (``HARVEST_KEEP_DAYS``, 30
days by default; ``harvest retry`` makes them persistent again), and
``harvest forget`` drops them at once.

Page states are implicit: *committed* (in a ``c`` hash), *failed* (in
``failed``), *leased* (queued or running, in ``lease``), else *pending*. The
Lua scripts beside this module make each transition atomic; this is the only
module that talks to Redis, and it turns redis-py errors into
:class:`~harvester.errors.BrokerUnavailable`. Free text a worker stores (failure
records, finalizer errors) passes :func:`~harvester.core.secrets.scrub` here first,
so no resolved secret reaches Redis or its AOF.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import structlog

from ..core.layout import FOLDED, Commit, decode_pages, folded_pages
from ..core.secrets import scrub, scrub_value
from ..core.spec import JobSpec
from ..errors import JobNotFound
from .connection import now_ms
from .sealing import FINALIZER_PAGE, SealRecords

log = structlog.get_logger("harvester.ledger")

FINAL_STATES = ("done", "failed", "cancelled")
BUCKET = 128


@dataclass(frozen=True)
class Start:
    """The answer to a worker that wants to begin a page."""

    run: bool
    reason: str = ""
    tries: int = 0
    link: dict[str, Any] | None = None
    paused: bool = False  # a Retry-After pause of the job is in force
    total: int | None = None  # the job's page count now (None while more may appear)
    spec_rev: int = 0  # bumped when 'harvest retry --job' amends the spec


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str
    total: int
    open: bool
    committed: int
    failed: int
    raw_bytes: int
    gz_bytes: int
    lines: int
    created_at: float
    finished_at: float | None
    in_flight: int
    cancelled: bool
    aborted: str | None = None  # why the job could not go on
    capped: str | None = None  # max_pages reached while the API had more
    out_dir: str | None = None
    paused_until_ms: int = 0  # a Retry-After pause of the job, on Redis' clock
    requests: int = 0  # HTTP requests sent for the pages resolved so far

    @property
    def ended_early(self) -> bool:
        return self.cancelled or self.aborted is not None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def pending(self) -> int:
        return max(0, self.total - self.committed - self.failed)


class Ledger(SealRecords):
    """All Redis I/O of the harvester (except Celery's own): the connection and its
    scripts (:class:`~harvester.edges.connection.LedgerConnection`), what the finalizer
    reads and records (:class:`~harvester.edges.sealing.SealRecords`), and here each
    page's and job's transitions."""

    # ------------------------------------------------------------ lifecycle

    def create_job(self, job_id: str, spec: JobSpec, *, total: int, open_ended: bool,
                   window: int, local: bool = False) -> list[int]:
        """Record a new job and claim its first window of pages."""
        created = time.time()
        fields = {
            "spec": json.dumps(spec.to_dict(), separators=(",", ":")),
            "state": "running", "total": total, "open": "1" if open_ended else "0",
            "next_page": 1, "window": window,
            "committed": 0, "failed": 0, "raw_bytes": 0, "gz_bytes": 0, "lines": 0,
            "created_at": repr(created), "out_dir": spec.output.dir,
            "local": "1" if local else "0", "sealed_gen": 0, "cancelled": "0",
        }
        def build(pipe: Any) -> None:
            pipe.hset(self.key(job_id, "job"), mapping=fields)
            pipe.zadd("hv:jobs", {job_id: created})
            pipe.sadd("hv:active", job_id)

        self._pipeline(build)
        return self.fill(job_id)

    def fill(self, job_id: str) -> list[int]:
        return [int(p) for p in self.run_script(
            "fill", [self.key(job_id, "job"), self.key(job_id, "lease"),
                     self.key(job_id, "todo")],
            [self.prefix(job_id), now_ms() + self.queued_ms])]

    def spec(self, job_id: str) -> JobSpec:
        raw = self._call(self.redis.hget, self.key(job_id, "job"), "spec")
        if raw is None:
            raise JobNotFound(job_id)
        return JobSpec.from_dict(json.loads(raw))

    def state(self, job_id: str) -> JobState:
        fields, in_flight = self._pipeline(lambda pipe: (
            pipe.hgetall(self.key(job_id, "job")), pipe.zcard(self.key(job_id, "lease"))))
        if not fields:
            raise JobNotFound(job_id)
        return self._job_state(job_id, fields, in_flight)

    def states(self, job_ids: list[str]) -> list[JobState]:
        """The states of ``job_ids`` in one round trip; a job that is gone (expired,
        forgotten) is left out."""
        def build(pipe: Any) -> None:
            for job_id in job_ids:
                pipe.hgetall(self.key(job_id, "job"))
                pipe.zcard(self.key(job_id, "lease"))

        replies = self._pipeline(build, transaction=False) if job_ids else []
        return [self._job_state(job_id, fields, in_flight)
                for job_id, fields, in_flight in zip(job_ids, replies[::2], replies[1::2])
                if fields]

    @staticmethod
    def _job_state(job_id: str, fields: dict[str, str], in_flight: int) -> JobState:
        finished = fields.get("finished_at")
        return JobState(
            job_id=job_id, state=fields["state"], total=int(fields["total"]),
            open=fields["open"] == "1", committed=int(fields["committed"]),
            failed=int(fields["failed"]), raw_bytes=int(fields["raw_bytes"]),
            gz_bytes=int(fields["gz_bytes"]), lines=int(fields["lines"]),
            created_at=float(fields["created_at"]),
            finished_at=float(finished) if finished else None,
            in_flight=in_flight if fields["state"] == "running" else 0,
            cancelled=fields.get("cancelled") == "1",
            aborted=fields.get("aborted") or None,
            capped=fields.get("capped") or None,
            out_dir=fields.get("out_dir"),
            paused_until_ms=int(fields.get("paused_until") or 0),
            requests=int(fields.get("requests") or 0),
        )

    def field(self, job_id: str, name: str) -> str | None:
        return self._call(self.redis.hget, self.key(job_id, "job"), name)

    def set_once(self, job_id: str, name: str, value: str) -> str:
        """Set a job field unless set already; returns the value that stands."""
        key = self.key(job_id, "job")
        self._call(self.redis.hsetnx, key, name, value)
        return self._call(self.redis.hget, key, name)

    def active_jobs(self) -> list[str]:
        return sorted(self._call(self.redis.smembers, "hv:active"))

    def recent_jobs(self, limit: int = 20) -> list[str]:
        return self._call(self.redis.zrevrange, "hv:jobs", 0, limit - 1)

    def local_jobs_running(self) -> list[str]:
        """Jobs of ``--local`` runs not yet final (with the lock held: orphans)."""
        active = self.active_jobs()
        flags = self._pipeline(lambda pipe: [
            pipe.hmget(self.key(job_id, "job"), "local", "state") for job_id in active])
        return [job_id for job_id, (local, state) in zip(active, flags)
                if local == "1" and state not in FINAL_STATES]

    # ----------------------------------------------------------------- pages

    def start_pages(self, job_id: str, pages: list[int], worker: str = "?") -> dict[int, Start]:
        """Lease a run of pages to ``worker`` in one script call: each page's Start, with
        its link if it is a chained page."""
        result = self.run_script(
            "start", [self.key(job_id, n) for n in ("job", "lease", "tries", "links", "owner",
                                                    "failed")],
            [self.prefix(job_id), now_ms() + self.lease_ms, worker, now_ms(), *pages])
        if result[0] != "run":
            return {page: Start(run=False, reason=result[1]) for page in pages}
        paused = (int(result[1]) if result[1] else 0) > now_ms()
        total = int(result[2]) if result[3] == "0" else None
        spec_rev = int(result[4] or 0)
        starts: dict[int, Start] = {}
        i = 5
        while i < len(result):
            page = int(result[i])
            if result[i + 1] == "run":
                starts[page] = Start(run=True, tries=int(result[i + 2]),
                                     link=json.loads(result[i + 3]) if result[i + 3] else None,
                                     paused=paused, total=total, spec_rev=spec_rev)
                i += 4
            else:
                starts[page] = Start(run=False, reason=result[i + 2])
                i += 3
        return starts

    def register_segment(self, job_id: str, relative_path: str) -> int:
        seg_id = self._call(self.redis.hincrby, self.key(job_id, "job"), "next_segment", 1)
        self._call(self.redis.hset, self.key(job_id, "segs"), seg_id, relative_path)
        return int(seg_id)

    def commit(self, job_id: str, commit: Commit, *, total: int | None = None,
               close: bool = False, next_link: dict[str, str] | None = None,
               identity: str | None = None, requests: int = 0) -> tuple[str, list[int]]:
        """The commit point. Returns the outcome and the pages the caller must enqueue.

        ``next_link`` is how to request page ``commit.page + 1`` (chains);
        ``identity`` is refused (outcome ``repeated``) if an earlier page saw it.
        """
        digest = hashlib.sha1(identity.encode()).hexdigest()[:24] if identity else ""
        result = self.run_script(
            "commit", [self.key(job_id, n) for n in ("job", "lease", "tries", "failed", "todo",
                                                       "links", "seen", "owner", "buckets")],
            [self.prefix(job_id), commit.page, commit.encode(), commit.raw_bytes, commit.length,
             commit.lines, "" if total is None else total, "1" if close else "0",
             now_ms() + self.queued_ms, now_ms() + self.lease_ms,
             json.dumps(next_link, separators=(",", ":")) if next_link else "", digest,
             requests])
        if result[0] == "duplicate":
            if result[1] == commit.encode():
                # Our own commit, whose reply was lost (Redis restarted or the connection
                # dropped) and which ran again: it stands, with the pages it claimed then.
                return "committed", decode_pages(result[2])
            return "duplicate", []  # another worker's copy won; its claims are its own
        return result[0], [int(p) for p in result[1:]]

    def commit_run(self, job_id: str, commits: list[Commit], *,
                   requests: int = 0) -> tuple[str, list[int], dict[int, str]]:
        """The commit point of a run of fan-out pages written together (each names no
        total, successor or end), in one script call: returns the run's outcome
        (committed|last|closed|duplicate), the pages the caller must enqueue, and each
        page's own outcome (committed|duplicate|closed). ``requests``: HTTP requests the
        run's pages took (counted once the run commits)."""
        args: list[Any] = [self.prefix(job_id), now_ms() + self.queued_ms,
                           now_ms() + self.lease_ms, requests]
        for commit in commits:
            args += [commit.page, commit.encode(), commit.raw_bytes, commit.length, commit.lines]
        result = self.run_script(
            "commit_run", [self.key(job_id, n) for n in ("job", "lease", "tries", "failed",
                                                         "todo", "owner", "buckets")], args)
        outcome, count = result[0], int(result[1])
        claimed = [int(p) for p in result[2:2 + count]]
        mine = {commit.page: commit.encode() for commit in commits}
        pages: dict[int, str] = {}
        rest = result[2 + count:]
        for i in range(0, len(rest), 3):
            page, status, standing = int(rest[i]), rest[i + 1], rest[i + 2]
            if status == "new":
                pages[page] = "committed"
            elif status == "standing":
                location, _, claims = standing.partition("|")
                if location == mine[page]:
                    # Our own commit, whose reply was lost and which ran again: it
                    # stands, with the pages it claimed then.
                    pages[page] = "committed"
                    claimed += decode_pages(claims)
                else:
                    pages[page] = "duplicate"  # another worker's copy won
            else:
                pages[page] = "closed"
        if outcome != "last":
            outcome = ("committed" if "committed" in pages.values() else
                       "duplicate" if "duplicate" in pages.values() else "closed")
        return outcome, claimed, pages

    def fail(self, job_id: str, page: int, record: dict[str, Any], *,
             close: bool = False) -> tuple[str, list[int]]:
        result = self.run_script(
            "fail", [self.key(job_id, n) for n in ("job", "lease", "failed", "todo", "owner",
                                                     "claims")],
            [self.prefix(job_id), page, json.dumps(scrub_value(record), separators=(",", ":")),
             "1" if close else "0", now_ms() + self.queued_ms, now_ms() + self.lease_ms,
             int(record.get("attempts") or 0)])
        return result[0], [int(p) for p in result[1:]]

    def renew(self, leases: list[tuple[str, int]]) -> None:
        """Extend the leases of pages this process is working on (heartbeat)."""
        if not leases:
            return
        until = now_ms() + self.lease_ms

        by_job: dict[str, dict[str, int]] = {}
        for job_id, page in leases:
            by_job.setdefault(job_id, {})[str(page)] = until

        def build(pipe: Any) -> None:
            for job_id, pages in by_job.items():
                pipe.zadd(self.key(job_id, "lease"), pages, xx=True)

        self._pipeline(build, transaction=False)

    def reap(self, job_id: str, queues: list[str], *, stale_seconds: float = 30.0,
             limit: int = 100) -> list[int]:
        """Pages to re-send (see ``lua/reap.lua``), now leased to the caller."""
        now = now_ms()
        pages = self.run_script(
            "reap", [self.key(job_id, n) for n in ("job", "lease", "owner")] + queues,
            [now, now + self.lease_ms * 2, limit, self.queued_ms, int(stale_seconds * 1000),
             now + self.queued_ms])
        return [int(p) for p in pages]

    def cancel(self, job_id: str) -> str:
        return self.run_script("cancel", [self.key(job_id, n) for n in ("job", "lease", "todo")],
                               [now_ms() + self.lease_ms, ""])

    def abort(self, job_id: str, reason: str) -> str:
        """Stop a job that cannot go on, recording why (the manifest's ``error``)."""
        return self.run_script("cancel", [self.key(job_id, n) for n in ("job", "lease", "todo")],
                               [now_ms() + self.lease_ms, scrub(reason)[:2000] or "aborted"])

    def end_at(self, job_id: str, page: int) -> str:
        """``stop_on_status``: the job ends before ``page``. Returns last|ended|closed."""
        return self.run_script(
            "end_at", [self.key(job_id, n) for n in ("job", "lease", "tries", "owner", "links")],
            [self.prefix(job_id), page, now_ms() + self.lease_ms])

    def note_capped(self, job_id: str, reason: str) -> None:
        """max_pages ended the job while the API had more: said in the manifest and run."""
        self._call(self.redis.hset, self.key(job_id, "job"), "capped", reason[:500])

    def reopen(self, job_id: str, *, open_ended: bool) -> str:
        result = self.run_script("reopen", [self.key(job_id, n) for n in ("job", "failed", "todo",
                                                                       "tries")],
                           ["1" if open_ended else "0"])
        if result == "running":
            keys = self._job_keys(job_id)
            def build(pipe: Any) -> None:
                pipe.sadd("hv:active", job_id)
                pipe.hdel(self.key(job_id, "job"), "finished_at")
                for key in keys:
                    pipe.persist(key)
            self._pipeline(build)
        return result

    def amend_spec(self, job_id: str, spec: JobSpec) -> None:
        """A final job's spec, replaced (``harvest retry --job``); workers reload it."""
        def build(pipe: Any) -> None:
            pipe.hset(self.key(job_id, "job"), "spec",
                      json.dumps(spec.to_dict(), separators=(",", ":")))
            pipe.hincrby(self.key(job_id, "job"), "spec_rev", 1)
        self._pipeline(build)

    def finalizer_claimed(self, job_id: str) -> bool:
        """Whether some process has begun sealing the job (holds page 0)."""
        return self._call(self.redis.hexists, self.key(job_id, "owner"), FINALIZER_PAGE)

    def forget(self, job_id: str) -> int:
        """Drop every key of a job now; returns how many existed."""
        keys = self._job_keys(job_id)
        def build(pipe: Any) -> None:
            for chunk in range(0, len(keys), 1000):
                pipe.delete(*keys[chunk:chunk + 1000])
            pipe.zrem("hv:jobs", job_id)
            pipe.srem("hv:active", job_id)
        return sum(self._pipeline(build)[:-2])

    def is_committed(self, job_id: str, page: int) -> bool:
        key = f"{self.prefix(job_id)}:c:{page // BUCKET}"
        record, folded = self._call(self.redis.hmget, key, [page, FOLDED])
        return record is not None or page in folded_pages(page // BUCKET, folded)

    def release_pages(self, job_id: str, pages: list[int], worker: str) -> list[int]:
        """``worker`` gives ``pages`` back: queued again, owned by no one. Returns the
        pages it still owned (the caller sends those again)."""
        if not pages:
            return []
        given = self.run_script("release", [self.key(job_id, "lease"), self.key(job_id, "owner")],
                                [worker, now_ms() + self.queued_ms, *pages])
        return [int(p) for p in given]

    def renew_finalizer(self, job_id: str) -> None:
        self.renew([(job_id, FINALIZER_PAGE)])
