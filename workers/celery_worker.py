"""``python -m workers.celery_worker [celery worker options]``: celery's ``worker``
command for this app, started without the rest of celery's command line.

Every ``harvest worker`` and ``--local`` worker starts here instead of ``python -m
celery -A workers.app:app worker``: the same options, parsed by celery's own
``worker`` command, the same worker, in less memory (a clean install: 62 -> ~51 MB
RSS idle, then 48 MB with the refusals below), because the umbrella ``celery``
command imports, at start-up, what no worker uses:

- every subcommand: ``amqp`` registers an interactive shell through click_repl,
  which imports prompt_toolkit (~120 modules, ~7 MB);
- every installed ``celery.commands`` plugin: with Flower installed beside the
  workers (as in a shared image), all of Flower's web app and tornado.

And some libraries import optional packages whenever they are installed (in a
shared image or a dev environment) for features a worker never uses, so it
imports none of them (each measured on an idle worker, 8 threads):

- rich and pygments (~4 MB): structlog renders exceptions with rich, celery
  colours its output with pygments; a worker's logs are plain lines or JSON.
- PyYAML (~1 MB) and Django (~0.1 MB): kombu registers a YAML serializer and
  teaches its JSON encoder Django's lazy strings; the app accepts JSON only.
- psutil (~0.8 MB): celery's memory-sampling remote commands (``celery inspect
  memdump`` then says psutil is not installed).
- opentelemetry (~0.3 MB): redis-py's metrics export, which nothing here sets up.
- charset_normalizer (and chardet) (~3 MB): requests guesses the text encoding of a
  body with it for ``Response.text`` when the server names none; a worker streams
  bodies as bytes and never asks (without it, requests falls back to UTF-8 and
  warns once at import: that warning is silenced here).

``celery -A workers.app:app ...`` works as before, with all of them.
"""

from __future__ import annotations

import sys
import warnings

# Each imported inside try/except ImportError by the library that wants it.
_UNUSED_OPTIONAL = ("rich", "pygments", "yaml", "django", "psutil", "opentelemetry",
                    "charset_normalizer", "chardet")


def main(argv: list[str] | None = None) -> None:
    for optional in _UNUSED_OPTIONAL:
        sys.modules.setdefault(optional, None)  # type: ignore[arg-type]
    warnings.filterwarnings("ignore", message="Unable to find acceptable character detection",
                            module="requests")
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
