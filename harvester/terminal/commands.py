"""What each ``harvest`` command does; :mod:`harvester.cli` parses and maps errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from ..client import CANCEL_SEAL_WAIT, Harvester, Job
from ..core.job import load_job
from ..edges.store import open_store
from ..engine import coordinator
from ..errors import JobStateError
from ..settings import Settings
from .local import LocalCluster
from .watch import EXIT_FAILED_PAGES, EXIT_OK, watch

EXIT_USAGE, EXIT_ERROR = 2, 4


class Context:
    """What a command needs: the Python API's :class:`Harvester` (its ledger and
    dispatcher), and the local cluster under ``--local``."""

    def __init__(self, settings: Settings, cluster: LocalCluster | None):
        self.settings = settings
        self.cluster = cluster
        self.harvester = Harvester(settings=settings)
        self.ledger = self.harvester.ledger
        self.ledger.ping()
        self.dispatcher = self.harvester.dispatcher

    def local_failure(self) -> str | None:
        if self.cluster and self.cluster.workers:
            return self.cluster.workers.failure
        return None


@contextmanager
def context(local: bool, workers: int = 2, threads: int = 8) -> Iterator[Context]:
    settings = Settings.from_env()
    cluster = None
    if local:
        cluster = LocalCluster(settings.home, workers=workers, threads=threads)
        try:
            url = cluster.start_redis()
        except BaseException:
            cluster.stop()
            raise
        os.environ["HARVEST_REDIS_URL"] = url  # inherited by the worker processes
        _err(f"local cluster: redis {url} (data in {cluster.redis.data_dir})")
        settings = Settings.from_env()
    ctx = None
    try:
        ctx = Context(settings, cluster)
        yield ctx
    finally:
        if ctx is not None:
            ctx.harvester.close()
        if cluster is not None:
            cluster.stop()


def _out(line: str) -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _settle_orphans(ctx: Context, keep: str | None = None) -> None:
    """Cancel ``--local`` jobs whose command died (this one holds the local lock, so
    any other running local job has no command left): their pages must not take this
    run's workers, and they wait for 'harvest retry JOB_ID --local'."""
    for job_id in ctx.ledger.local_jobs_running():
        if job_id == keep:
            continue
        coordinator.cancel(job_id, ctx.ledger, ctx.dispatcher)
        _err(f"job {job_id} of an earlier --local run that was killed is stopped;"
             f" its committed pages are sealed. 'harvest retry {job_id} --local' runs the rest.")


# ------------------------------------------------------------------ commands

def cmd_run(args: argparse.Namespace) -> int:
    if args.detach and args.local:
        _err("harvest run: --detach cannot be used with --local (the local cluster stops"
             " when the command ends)")
        return EXIT_USAGE
    spec = load_job(args.job)
    open_store(spec.output.dir).check_new(args.job)  # exits 2 before any broker is needed
    with context(args.local, args.workers, args.threads) as ctx:
        if args.local:
            _settle_orphans(ctx)
        job_id = ctx.harvester.submit(Job(spec, args.job), local=args.local)
        _out(f"job {job_id}")
        if args.detach:
            _err(f"submitted; follow it with: harvest status {job_id}")
            return EXIT_OK
        if ctx.cluster is not None:
            ctx.cluster.start_workers(job_id)
        return watch(ctx, job_id, local=args.local)


def cmd_retry(args: argparse.Namespace) -> int:
    fixed = load_job(args.job) if args.job else None  # exits 2 before any broker is needed
    with context(args.local, args.workers, args.threads) as ctx:
        if args.local:
            _settle_orphans(ctx, keep=args.job_id)
        queued = ctx.harvester.retry(args.job_id, job=Job(fixed, args.job) if fixed else None)
        _out(f"job {args.job_id}")
        _err(f"retrying: {queued} page(s) queued"
             + (f", with the job as amended by {args.job}" if fixed else ""))
        if args.detach and not args.local:
            return EXIT_OK
        if ctx.cluster is not None:
            ctx.cluster.start_workers(f"{args.job_id}-retry-{int(time.time())}")
        return watch(ctx, args.job_id, local=args.local)


def cmd_status(args: argparse.Namespace) -> int:
    with context(args.local, 0) as ctx:
        status = ctx.harvester.status(args.job_id)
        if args.json:
            _out(json.dumps(status.to_dict()))
        else:
            from .progress import describe
            _out(describe(ctx.ledger.state(args.job_id), 0, 0))
            _out(f"output: {status.output_dir}")
        return status.exit_code


def cmd_cancel(args: argparse.Namespace) -> int:
    with context(args.local, 0) as ctx:
        try:
            # With --local no worker serves the job: seal it here at once.
            ctx.harvester.cancel(args.job_id, seal_wait=0 if args.local else CANCEL_SEAL_WAIT)
        except JobStateError as exc:
            _err(str(exc))
            return EXIT_ERROR
        _out(f"job {args.job_id} cancelled; committed pages are sealed."
             f" 'harvest retry {args.job_id}{' --local' if args.local else ''}' runs the rest.")
        return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    with context(args.local, 0) as ctx:
        try:
            ctx.harvester.forget(args.job_id)
        except JobStateError as exc:
            _err(f"{exc} ('harvest cancel {args.job_id}')")
            return EXIT_ERROR
        _out(f"job {args.job_id} forgotten: its ledger is gone from Redis; its output"
             " directory is untouched")
        return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from ..engine.verify import summary, verify
    from ..errors import VerifyError

    try:
        report = verify(args.dir)
    except VerifyError as exc:
        _err(f"verify: {exc.directory} is damaged:")
        for problem in exc.problems:
            _err(f"  - {problem}")
        _err("Its parts do not match the manifest: run the job again into a new output dir"
             " (or 'harvest finalize JOB_ID' if the job's ledger still exists).")
        return EXIT_ERROR
    _out(f"{'ok' if report.complete else 'incomplete'} {summary(report)}")
    if report.capped:
        _err(f"note: {report.capped}")
    if report.complete:
        return EXIT_OK
    why = f"{report.failed} failed, {report.pending} pending" + (
        f", the job was {report.state}" if report.state not in ("done", "failed") else "")
    _err(f"verify: {args.dir} is intact but incomplete ({why})"
         + (f": {report.error}" if report.error else "")
         + f". 'harvest retry {report.job_id}' runs the missing pages.")
    return EXIT_FAILED_PAGES


def cmd_finalize(args: argparse.Namespace) -> int:
    from ..engine.finalizer import finalize

    with context(args.local, 0) as ctx:
        _out(finalize(ctx.ledger, args.job_id, part_bytes=ctx.settings.part_bytes,
                      worker=f"cli-{os.getpid()}"))
        return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    token = os.environ.get("HARVEST_API_TOKEN", "")
    if len(token) < 16:
        _err("harvest serve: set HARVEST_API_TOKEN to a secret of 16 characters or more"
             " (e.g. 'export HARVEST_API_TOKEN=$(openssl rand -hex 24)'); every route but"
             " /healthz requires it as 'Authorization: Bearer TOKEN'")
        return EXIT_USAGE
    try:
        import uvicorn

        from ..service.app import create_app
    except ImportError as exc:
        _err(f"harvest serve needs the service's packages ({exc.name} is missing):"
             " pip install 'harvester[serve]'")
        return EXIT_USAGE
    harvester = Harvester(settings=Settings.from_env())
    harvester.ping()  # exits 3 with the reason if Redis is not there
    _err(f"serving on http://{args.host}:{args.port}/ (dashboard: /?token=...; API docs: /docs)")
    try:
        uvicorn.run(create_app(harvester, token), host=args.host, port=args.port,
                    log_level="warning", access_log=False)
    finally:
        harvester.close()
    return EXIT_OK


def worker_argv(celery_args: list[str]) -> list[str]:
    defaults = ["-P", "threads", "-c", "8", "-Q", "harvest", "-E", "--without-gossip",
                "--without-mingle", "--loglevel", "INFO"]
    return [sys.executable, "-m", "workers.celery_worker", *defaults, *celery_args]


def cmd_worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, worker_argv(args.celery_args))
    return EXIT_ERROR  # not reached
