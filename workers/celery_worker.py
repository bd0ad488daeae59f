"""``python -m workers.celery_worker [celery worker options]``: celery's ``worker``
command for this app, started without the rest of celery's command line.

Every ``harvest worker`` and ``--local`` worker starts here instead of ``python -m
celery -A workers.app:app worker``: the same options, parsed by celery's own
``worker`` command, the same worker, in less memory (a clean install: 62 -> ~50 MB
RSS idle), because the umbrella ``celery`` command imports, at start-up, what no
worker uses:

- every subcommand: ``amqp`` registers an interactive shell through click_repl,
  which imports prompt_toolkit (~120 modules, ~7 MB);
- every installed ``celery.commands`` plugin: with Flower installed beside the
  workers (as in a shared image), all of Flower's web app and tornado.

And structlog renders exceptions with rich, celery colours its output with
pygments, when they can be imported (~4 MB): a worker's logs are plain lines or
JSON, so it imports neither. ``celery -A workers.app:app ...`` works as before.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    for optional in ("rich", "pygments"):  # both imported inside try/except ImportError
        sys.modules.setdefault(optional, None)  # type: ignore[arg-type]
    from celery import maybe_patch_concurrency

    maybe_patch_concurrency()  # what `celery` does first, for -P eventlet/gevent
    from celery.bin.base import CLIContext
    from celery.bin.worker import worker

    from .app import app

    worker.params.extend(app.user_options.get("worker", []))
    worker.main(args=sys.argv[1:] if argv is None else argv, prog_name="harvest worker",
                obj=CLIContext(app=app, no_color=False, workdir=None, quiet=False))


if __name__ == "__main__":
    main()
