"""The Python API: submit, follow, retry, cancel and read harvest jobs from code.

::

    from harvester import Harvester, Job

    with Harvester() as harvester:            # HARVEST_REDIS_URL, or Harvester(redis_url)
        job_id = harvester.submit(Job.from_toml("jobs/users.toml"))
        status = harvester.wait(job_id, progress=lambda s: print(s.committed, s.total))
        if not status.ok:
            raise SystemExit(status.exit_code)
        for record in harvester.records(job_id):
            ...

Workers run elsewhere (``harvest worker``); this class only talks to Redis (the
ledger and the broker) and reads the sealed output. The ``harvest`` CLI and
``harvest serve`` are thin layers over it. Every error is a
:class:`~harvester.errors.HarvesterError`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .core.job import job_from_document, job_from_toml, load_job
from .core.spec import JobSpec
from .edges.ledger import JobState, Ledger
from .edges.store import open_store
from .engine import coordinator
from .engine.output import SealedOutput
from .errors import JobStateError, OutputNotSealed, WaitTimeout
from .settings import Settings, ledger_for

# How long cancel() waits for a worker to start sealing a cancelled job before it
# seals it itself (no worker may serve the job).
CANCEL_SEAL_WAIT = 10.0


@dataclass(frozen=True)
class Job:
    """A validated job, ready to submit. ``source`` names it in error messages."""

    spec: JobSpec
    source: str = "<job>"

    @classmethod
    def from_toml(cls, path: str | Path, *, base_dir: str | Path | None = None) -> "Job":
        """A job file; a relative ``output.dir`` is taken against ``base_dir`` (default:
        the current directory)."""
        return cls(load_job(path, base_dir), str(path))

    @classmethod
    def from_toml_text(cls, text: str | bytes, *, source: str = "<job>",
                       base_dir: str | Path | None = None) -> "Job":
        return cls(job_from_toml(text, source=source, base_dir=base_dir), source)

    @classmethod
    def from_dict(cls, document: dict[str, Any], *, source: str = "<dict>",
                  base_dir: str | Path | None = None) -> "Job":
        """The sections of a job file as a dict (``{"job": {...}, "pagination": {...},
        "output": {...}}``), validated exactly as a file is."""
        return cls(job_from_document(document, source=source, base_dir=base_dir), source)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, as the ledger has it now."""

    job_id: str
    state: str  # running | finalizing | done | failed | cancelled
    total: int
    total_known: bool  # False while more pages may appear (chains, totals from page 1)
    committed: int
    failed: int
    pending: int
    in_flight: int
    raw_bytes: int
    compressed_bytes: int
    lines: int
    output_dir: str | None
    error: str | None  # why the job stopped before its end
    capped: str | None  # max_pages reached while the API had more
    created_at: float
    finished_at: float | None
    paused_until: float | None  # a Retry-After pause of the whole job (epoch seconds)
    # HTTP requests sent for the pages resolved so far; beyond one a page, the retries
    # (urllib3's and the task's last try's) and redirects followed.
    requests: int

    @classmethod
    def from_state(cls, state: JobState) -> "JobStatus":
        paused = state.paused_until_ms / 1000 if state.paused_until_ms and not state.final \
            else None
        return cls(job_id=state.job_id, state=state.state, total=state.total,
                   total_known=not state.open, committed=state.committed,
                   failed=state.failed, pending=state.pending, in_flight=state.in_flight,
                   raw_bytes=state.raw_bytes, compressed_bytes=state.gz_bytes,
                   lines=state.lines, output_dir=state.out_dir, error=state.aborted,
                   capped=state.capped, created_at=state.created_at,
                   finished_at=state.finished_at, paused_until=paused,
                   requests=state.requests)

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @property
    def ok(self) -> bool:
        """Final and complete: every page committed (what ``_SUCCESS`` says)."""
        return self.state == "done"

    @property
    def exit_code(self) -> int:
        """What ``harvest run`` exits with for this job: 0 done (or not final yet),
        1 failed pages, cancelled or stopped early."""
        return 0 if self.ok or not self.final else 1

    @property
    def retries(self) -> int:
        """Requests beyond one per resolved page: retries, and redirects followed."""
        return max(0, self.requests - self.committed - self.failed)

    @property
    def paused(self) -> bool:
        return self.paused_until is not None and self.paused_until > time.time()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "final": self.final, "paused": self.paused,
                "retries": self.retries}


class Harvester:
    """A handle on one harvest cluster, named by its Redis URL."""

    def __init__(self, redis_url: str | None = None, *, settings: Settings | None = None):
        settings = settings or Settings.from_env()
        if redis_url:
            settings = replace(settings, redis_url=redis_url)
        self.settings = settings
        self.ledger: Ledger = ledger_for(settings)
        self._app: Any = None
        self._dispatcher: Any = None
        self._dispatcher_lock = threading.Lock()  # the service calls from many threads

    # The Celery app is built on first use: status and output reading need none.
    @property
    def dispatcher(self) -> Any:
        with self._dispatcher_lock:
            if self._dispatcher is None:
                from workers.app import make_app

                from .engine.dispatch import CeleryDispatcher

                self._app = make_app(self.settings)
                self._dispatcher = CeleryDispatcher(self._app,
                                                    run_pages=self.settings.run_pages)
            return self._dispatcher

    def __enter__(self) -> "Harvester":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ledger.redis.close()
        if self._app is not None:
            self._app.close()

    def ping(self) -> None:
        """Raise :class:`~harvester.errors.BrokerUnavailable` unless Redis answers."""
        self.ledger.ping()

    # ---------------------------------------------------------------- jobs

    def submit(self, job: Job | JobSpec, *, local: bool = False) -> str:
        """Queue ``job``; returns its id. Refuses an output dir that is in use."""
        spec, source = (job.spec, job.source) if isinstance(job, Job) else (job, "<job>")
        open_store(spec.output.dir).check_new(source)
        return coordinator.submit(spec, self.ledger, self.dispatcher, self.settings,
                                  local=local, job_path=source)

    def status(self, job_id: str) -> JobStatus:
        return JobStatus.from_state(self.ledger.state(job_id))

    def jobs(self, limit: int = 50) -> list[JobStatus]:
        """The most recent jobs first (those whose ledger has not expired)."""
        return [JobStatus.from_state(state)
                for state in self.ledger.states(self.ledger.recent_jobs(limit))]

    def wait(self, job_id: str, *, progress: Callable[[JobStatus], None] | None = None,
             timeout: float | None = None, poll_seconds: float = 0.5) -> JobStatus:
        """Block until the job is final; ``progress`` is called with each status read
        (the last one final). Raises :class:`~harvester.errors.WaitTimeout` after
        ``timeout`` seconds (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if progress is not None:
                progress(status)
            if status.final:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(job_id, timeout or 0.0, status.state)
            time.sleep(poll_seconds)

    def retry(self, job_id: str, *, job: Job | JobSpec | None = None) -> int:
        """Run again the pages of a final job that failed or never ran; returns how many
        are queued. ``job``: a corrected job (token, timeouts), refused naming the key
        where it would change what a page requests."""
        fixed, source = ((job.spec, job.source) if isinstance(job, Job) else (job, "<job>"))
        return coordinator.retry(job_id, self.ledger, self.dispatcher, fixed=fixed,
                                 job_path=source)

    def cancel(self, job_id: str, *, seal_wait: float = CANCEL_SEAL_WAIT) -> str:
        """Stop a running job and seal what it committed; returns its final state.
        A worker seals it; if none has begun within ``seal_wait`` s, this process does."""
        result = coordinator.cancel(job_id, self.ledger, self.dispatcher)
        if result != "cancelled":
            raise JobStateError(f"job {job_id} is {result}; nothing to cancel",
                                job_id=job_id, state=result)
        if not self._sealed_by_a_worker(job_id, seal_wait):
            from .engine.finalizer import finalize

            finalize(self.ledger, job_id, part_bytes=self.settings.part_bytes,
                     worker=f"api-{os.getpid()}")
        return self.ledger.state(job_id).state

    def _sealed_by_a_worker(self, job_id: str, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.ledger.state(job_id).final:
                return True
            time.sleep(0.2)
        return self.ledger.finalizer_claimed(job_id)

    def forget(self, job_id: str) -> None:
        """Drop a final job's ledger from Redis (its output stays)."""
        state = self.ledger.state(job_id)
        if not state.final:
            raise JobStateError(f"job {job_id} is {state.state}; cancel it first",
                                job_id=job_id, state=state.state)
        self.ledger.forget(job_id)

    # -------------------------------------------------------------- output

    def failures(self, job_id: str) -> list[dict[str, Any]]:
        """Why each failed page failed, in page order, as the ledger has it now."""
        failures = self.ledger.failures(job_id)
        return [failures[page] for page in sorted(failures)]

    def output(self, job_id: str) -> SealedOutput:
        """The sealed output of a final job."""
        status = self.status(job_id)
        if not status.final or status.output_dir is None:
            raise OutputNotSealed(job_id, status.state)
        return SealedOutput.open(status.output_dir)

    def records(self, job_id: str) -> Iterator[Any]:
        """Every committed record of a final job, in page order, read lazily."""
        return self.output(job_id).records()

    def pages(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Every committed page of a final pages-mode job, one at a time."""
        return self.output(job_id).pages()
