"""The ``harvest`` command: parsing, signals, and what each error exits with.

Exit codes (the README's table):

    0  every page committed (verify: the output is complete and intact)
    1  the job ended with failed, cancelled or unfinished pages (verify: intact
       but incomplete)
    2  bad input: the job file, an argument, the output directory
    3  no broker, or the --local cluster could not start
    4  any other error (verify: the output is damaged), with one line saying what
       to do; an unexpected one also leaves its traceback in a crash log
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP)

Only the standard library is imported before :func:`main` runs, so that even a
broken install (a dependency missing) ends with one line and exit 4.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FAILED_PAGES, EXIT_USAGE, EXIT_BROKER, EXIT_ERROR = 0, 1, 2, 3, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harvest", description="Harvest a paginated HTTP JSON API into sharded gzip files,"
        " one Celery task per page (exit codes: 0 complete, 1 failed pages, 2 bad input,"
        " 3 no broker, 4 other errors).")
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

    def command(name: str, handler: str, help: str, **kwargs) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, **kwargs)
        sub.set_defaults(handler=handler)
        return sub

    run = command("run", "cmd_run", "validate a job file, enqueue it and show progress")
    run.add_argument("job", metavar="JOB.toml")
    local_flags(run)

    status = command("status", "cmd_status", "where a job stands")
    status.add_argument("job_id", metavar="JOB_ID")
    status.add_argument("--json", action="store_true")
    local_flags(status, workers=False)

    retry = command("retry", "cmd_retry",
                    "run again the pages that failed or never finished")
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.add_argument("--job", metavar="FIXED.toml",
                       help="the job file, corrected: new headers (a token), [http] or [limits];"
                            " a change to what a page requests is refused")
    local_flags(retry)

    cancel = command("cancel", "cmd_cancel", "stop a job; what was committed stays valid")
    cancel.add_argument("job_id", metavar="JOB_ID")
    local_flags(cancel, workers=False)

    verify = command("verify", "cmd_verify",
                     "check an output directory against its manifest (0 complete, 1 intact but"
                     " incomplete, 4 damaged)")
    verify.add_argument("dir", metavar="DIR")

    finalize = command("finalize", "cmd_finalize",
                       "seal a job's committed pages into its output dir again (for operators:"
                       " after fixing what made the finalizer fail)")
    finalize.add_argument("job_id", metavar="JOB_ID")
    local_flags(finalize, workers=False)

    forget = command("forget", "cmd_forget",
                     "drop a finished job's ledger from Redis now (it expires by itself after"
                     " HARVEST_KEEP_DAYS, 30 by default); the output is untouched")
    forget.add_argument("job_id", metavar="JOB_ID")
    local_flags(forget, workers=False)

    serve = command("serve", "cmd_serve",
                    "the HTTP service: jobs over HTTP, progress as Server-Sent Events, the"
                    " output streamed, Prometheus metrics and a dashboard at /"
                    " (needs HARVEST_API_TOKEN)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_positive_int, default=8900, help="default 8900")

    worker = command("worker", "cmd_worker", "a Celery worker with the right settings"
                     " (further options go to 'celery worker')", add_help=False)
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM (a `timeout`, a supervisor) and SIGHUP (a closed terminal) end the
    # command the way Ctrl-C does: a --local run cancels its job and stops its
    # redis-server and workers instead of leaving them behind.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        # Everything after 'worker' belongs to celery; argparse would reject its options.
        args = argparse.Namespace(handler="cmd_worker", celery_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        return _crashed(exc)


def _dispatch(args: argparse.Namespace) -> int:
    from . import logs
    from .errors import (
        BrokerUnavailable,
        HarvesterError,
        JobSpecError,
        LocalClusterError,
        OutputDirError,
    )
    from .settings import Settings
    from .terminal import commands

    logs.configure(Settings.from_env().log_format,
                   level=os.environ.get("HARVEST_LOG_LEVEL", "WARNING"))
    try:
        return getattr(commands, args.handler)(args)
    except (JobSpecError, OutputDirError) as exc:
        _err(f"error: {exc}")
        return EXIT_USAGE
    except (BrokerUnavailable, LocalClusterError) as exc:
        _err(f"error: {exc}")
        return EXIT_BROKER
    except HarvesterError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR


def _crashed(exc: Exception) -> int:
    """One line for the user, the traceback in a file: never a raw traceback, never exit 1."""
    text = "".join(traceback.format_exception(exc))
    try:
        from .core.secrets import scrub
        text, message = scrub(text), scrub(str(exc))
    except Exception:  # noqa: BLE001 - a broken install may not import even this
        message = str(exc)
    where = _write_crash_log(text)
    if isinstance(exc, ImportError):
        _err(f"error: harvester's install is broken: {type(exc).__name__}: {message[:300]}."
             " Reinstall it (pip install --force-reinstall harvester, or scripts/setup)."
             f" Details: {where}")
    else:
        _err(f"error: unexpected {type(exc).__name__}: {message[:300]}. This is a bug in"
             f" harvester, not in your job; please report it with {where}")
    return EXIT_ERROR


def _write_crash_log(text: str) -> str:
    from .settings import Settings  # standard library only

    home = Settings.from_env().home
    name = f"crash-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    for directory in (home / "logs", Path("/tmp")):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            path.write_text(text, encoding="utf-8")
            return str(path)
        except OSError:
            continue
    return "(no crash log could be written)"


if __name__ == "__main__":
    sys.exit(main())
