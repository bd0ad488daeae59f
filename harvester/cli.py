"""The ``harvest`` command.

Exit codes: 0 every page committed; 1 the job ended with failed (or, after a
cancel, unfinished) pages; 2 bad input or usage; 3 no broker or no local
cluster; 4 any other error, with a message saying what to do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

from . import coordinator, logs
from .errors import (BrokerUnavailable, HarvesterError, JobNotFound, JobSpecError,
                     LocalClusterError, OutputDirError, VerifyError)
from .job import load_job
from .ledger import JobState
from .local import LocalCluster
from .outdir import check_output_dir
from .progress import Progress
from .settings import Settings, ledger_for

EXIT_OK, EXIT_FAILED_PAGES, EXIT_USAGE, EXIT_BROKER, EXIT_ERROR = 0, 1, 2, 3, 4
FINALIZE_ATTEMPTS = 3


class Context:
    """What a command needs: settings, the ledger and a dispatcher, local or not."""

    def __init__(self, settings: Settings, cluster: LocalCluster | None):
        from workers.app import make_app  # the Celery app, bound to this broker

        from .dispatch import CeleryDispatcher

        self.settings = settings
        self.cluster = cluster
        self.ledger = ledger_for(settings)
        self.ledger.ping()
        self.app = make_app(settings)
        self.dispatcher = CeleryDispatcher(self.app)


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
    try:
        yield Context(settings, cluster)
    finally:
        if cluster is not None:
            cluster.stop()


def _out(line: str) -> None:
    print(line, flush=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ commands

def cmd_run(args: argparse.Namespace) -> int:
    if args.detach and args.local:
        _err("harvest run: --detach cannot be used with --local (the local cluster stops"
             " when the command ends)")
        return EXIT_USAGE
    spec = load_job(args.job)
    check_output_dir(spec.output.dir, args.job)  # exits 2 before any broker is needed
    with context(args.local, args.workers, args.threads) as ctx:
        job_id = coordinator.submit(spec, ctx.ledger, ctx.dispatcher, ctx.settings,
                                    local=args.local, job_path=args.job)
        _out(f"job {job_id}")
        if args.detach:
            _err(f"submitted; follow it with: harvest status {job_id}")
            return EXIT_OK
        if ctx.cluster is not None:
            ctx.cluster.start_workers(job_id)
        return _watch(ctx, job_id, local=args.local)


def cmd_retry(args: argparse.Namespace) -> int:
    with context(args.local, args.workers, args.threads) as ctx:
        queued = coordinator.retry(args.job_id, ctx.ledger, ctx.dispatcher)
        _out(f"job {args.job_id}")
        _err(f"retrying: {queued} page(s) queued")
        if args.detach and not args.local:
            return EXIT_OK
        if ctx.cluster is not None:
            ctx.cluster.start_workers(f"{args.job_id}-retry-{int(time.time())}")
        return _watch(ctx, args.job_id, local=args.local)


def cmd_status(args: argparse.Namespace) -> int:
    with context(args.local, 0) as ctx:
        state = ctx.ledger.state(args.job_id)
        out_dir = ctx.ledger.field(args.job_id, "out_dir")
        if args.json:
            _out(json.dumps({"job_id": state.job_id, "state": state.state, "total": state.total,
                             "total_known": not state.open, "committed": state.committed,
                             "failed": state.failed, "pending": state.pending,
                             "in_flight": state.in_flight, "raw_bytes": state.raw_bytes,
                             "compressed_bytes": state.gz_bytes, "output_dir": out_dir}))
        else:
            from .progress import describe
            _out(describe(state, 0, 0))
            _out(f"output: {out_dir}")
        return _exit_code(state)


def cmd_cancel(args: argparse.Namespace) -> int:
    with context(args.local, 0) as ctx:
        result = coordinator.cancel(args.job_id, ctx.ledger, ctx.dispatcher)
        if result == "cancelled":
            _out(f"job {args.job_id} cancelled; committed pages are being sealed."
                 f" 'harvest retry {args.job_id}' runs the rest.")
            return EXIT_OK
        _err(f"job {args.job_id} is {result}; nothing to cancel")
        return EXIT_ERROR


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import summary, verify

    try:
        report = verify(args.dir)
    except VerifyError as exc:
        _err(f"verify failed for {exc.directory}:")
        for problem in exc.problems:
            _err(f"  - {problem}")
        return EXIT_FAILED_PAGES
    _out(f"ok {summary(report)}")
    return EXIT_OK


def cmd_finalize(args: argparse.Namespace) -> int:
    from .finalizer import finalize

    with context(args.local, 0) as ctx:
        _out(finalize(ctx.ledger, args.job_id, part_bytes=ctx.settings.part_bytes,
                      worker=f"cli-{os.getpid()}"))
        return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    defaults = ["-P", "threads", "-c", "8", "-Q", "harvest", "-E", "--without-gossip",
                "--without-mingle", "--loglevel", "INFO"]
    argv = [sys.executable, "-m", "celery", "-A", "workers.app:app", "worker", *defaults,
            *args.celery_args]
    os.execv(sys.executable, argv)
    return EXIT_ERROR  # not reached


# --------------------------------------------------------------- watching

def _watch(ctx: Context, job_id: str, *, local: bool) -> int:
    progress = Progress()
    started = time.monotonic()
    hinted = False
    broker_down_since: float | None = None
    # Poll with short waits, so an outage is reported while it lasts.
    ctx.ledger.wait_seconds = 1.0
    try:
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
                progress.close()
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
                break
            if ctx.cluster and ctx.cluster.workers and ctx.cluster.workers.failure:
                raise LocalClusterError(ctx.cluster.workers.failure)
            if state.state == "finalizing" and \
                    int(ctx.ledger.field(job_id, "finalize_failures") or 0) >= FINALIZE_ATTEMPTS:
                progress.close()
                raise HarvesterError(
                    f"the finalizer of {job_id} keeps failing:"
                    f" {ctx.ledger.field(job_id, 'finalize_error')}. Fix the cause, then run"
                    f" 'harvest finalize {job_id}{' --local' if local else ''}'.")
            if not local and not hinted and state.committed + state.failed == 0 \
                    and time.monotonic() - started > 30:
                _err("no page done after 30 s: is a worker running? start one with"
                     " 'harvest worker', or use --local")
                hinted = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        progress.close()
        if not local:
            _err(f"\nstopped watching; the job goes on. 'harvest status {job_id}' shows it.")
            return 130
        _err("\ninterrupted: cancelling the job and sealing what is committed...")
        coordinator.cancel(job_id, ctx.ledger, ctx.dispatcher)
        deadline = time.monotonic() + 60
        while not ctx.ledger.state(job_id).final and time.monotonic() < deadline:
            time.sleep(0.2)
        _err(f"'harvest retry {job_id} --local' runs the rest.")
        return 130
    progress.close()
    return _report(ctx, state, local=local)


def _report(ctx: Context, state: JobState, *, local: bool) -> int:
    out_dir = ctx.ledger.field(state.job_id, "out_dir")
    retry = f"harvest retry {state.job_id}{' --local' if local else ''}"
    if state.state == "done":
        _err(f"done: {state.committed} pages committed to {out_dir}")
    elif state.state == "failed":
        _err(f"{state.failed} page(s) failed (listed in {out_dir}/_failed.jsonl);"
             f" {state.committed} committed. Run '{retry}' to run them again.")
    else:
        _err(f"job {state.state}: {state.committed} committed, {state.pending} not run."
             f" Run '{retry}' to run the rest.")
    return _exit_code(state)


def _exit_code(state: JobState) -> int:
    if state.state == "done":
        return EXIT_OK
    if state.final:
        return EXIT_FAILED_PAGES
    return EXIT_OK


# ------------------------------------------------------------------ parsing

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="harvest", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def local_flags(p: argparse.ArgumentParser, workers: bool = True) -> None:
        p.add_argument("--local", action="store_true",
                       help="use a private Redis (and worker processes) on this machine")
        if workers:
            p.add_argument("--workers", type=_positive_int, default=2,
                           help="worker processes with --local (default 2)")
            p.add_argument("--threads", type=_positive_int, default=8,
                           help="threads per worker process with --local (default 8)")
            p.add_argument("--detach", action="store_true",
                           help="return after enqueueing instead of showing progress")

    run = commands.add_parser("run", help="validate a job file, enqueue it and show progress")
    run.add_argument("job", metavar="JOB.toml")
    local_flags(run)
    run.set_defaults(handler=cmd_run)

    status = commands.add_parser("status", help="where a job stands")
    status.add_argument("job_id", metavar="JOB_ID")
    status.add_argument("--json", action="store_true")
    local_flags(status, workers=False)
    status.set_defaults(handler=cmd_status)

    retry = commands.add_parser("retry", help="run again the pages that failed or never finished")
    retry.add_argument("job_id", metavar="JOB_ID")
    local_flags(retry)
    retry.set_defaults(handler=cmd_retry)

    cancel = commands.add_parser("cancel", help="stop a job; what was committed stays valid")
    cancel.add_argument("job_id", metavar="JOB_ID")
    local_flags(cancel, workers=False)
    cancel.set_defaults(handler=cmd_cancel)

    verify = commands.add_parser("verify", help="check an output directory against its manifest")
    verify.add_argument("dir", metavar="DIR")
    verify.set_defaults(handler=cmd_verify)

    worker = commands.add_parser("worker", help="a Celery worker with the right settings",
                                 add_help=False)
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    worker.set_defaults(handler=cmd_worker)

    finalize = commands.add_parser("finalize")  # for operators: seal a job again
    finalize.add_argument("job_id", metavar="JOB_ID")
    local_flags(finalize, workers=False)
    finalize.set_defaults(handler=cmd_finalize)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        # Everything after 'worker' belongs to celery; argparse would reject its options.
        return cmd_worker(argparse.Namespace(celery_args=argv[1:]))
    args = build_parser().parse_args(argv)
    logs.configure(Settings.from_env().log_format, level=os.environ.get("HARVEST_LOG_LEVEL",
                                                                         "WARNING"))
    try:
        return args.handler(args)
    except JobSpecError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except (BrokerUnavailable, LocalClusterError) as exc:
        _err(f"error: {exc}")
        return EXIT_BROKER
    except OutputDirError as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except (JobNotFound, HarvesterError) as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
