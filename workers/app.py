"""The Celery app, configured for at-least-once delivery without loss.

- JSON only, no pickle; results ignored (nothing, secrets included, lands in a backend).
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a page's message is acked
  only after the page is committed or failed, and goes back if its worker dies.
- ``worker_prefetch_multiplier = 1``: a worker holds no more messages than it runs.
- ``visibility_timeout`` longer than any ``page_deadline``, so a healthy long page
  is never redelivered while it runs; ``unacked_restore_interval`` and
  ``unacked_restore_throttle`` at 1 s so that, once it expires, a dead worker's
  message is back in about a second instead of kombu's default 10 x 10 s sweep.
  Leases in the ledger (see ``harvester.engine.heartbeat``) re-send a dead worker's page
  within seconds, long before that.
- Task events on, so Flower shows every page task.
- Logging: Celery's records go through the harvester's structlog pipeline. With
  ``HARVEST_LOG_FORMAT=json`` every line the worker writes, on stdout or stderr,
  is one JSON object: no banner, warnings captured from the start, and the
  shutdown notices Celery writes raw from its signal handlers as JSON lines too.
"""

from __future__ import annotations

import ssl
import warnings

from celery import Celery
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import celeryd_after_setup, celeryd_init, setup_logging

from harvester import logs
from harvester.engine.dispatch import QUEUE
from harvester.settings import Settings

from . import broker

broker.install()


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    app = Celery("harvester", broker=settings.redis_url, include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUE,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_send_task_events=True,
        task_send_sent_event=False,  # Flower shows tasks from received/started events; saves a publish per page
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if settings.redis_url.startswith("rediss://") and "ssl_cert_reqs" not in settings.redis_url:
        # kombu falls back to CERT_NONE (with only a warning) for a bare rediss:// URL;
        # a harvester talking TLS should check the server's certificate.
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app


@setup_logging.connect
def _use_harvester_logging(loglevel: object = None, **_: object) -> None:
    # Connecting this signal stops Celery from installing its own handlers:
    # its records flow through the structlog pipeline instead.
    logs.configure(Settings.from_env().log_format, level=loglevel or "INFO")


@celeryd_after_setup.connect
def _quiet_known_warnings(**_: object) -> None:
    # We chose worker_cancel_long_running_tasks_on_connection_loss = False on purpose
    # (leases and the ledger handle a lost connection); Celery warns about it on every
    # lost connection all the same. Added here, after Celery's logging setup has put
    # an "always" filter for its deprecation warnings in front.
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional",
                            category=CPendingDeprecationWarning)


@celeryd_init.connect
def _log_from_the_start(instance: object = None, options: dict | None = None,
                        **_: object) -> None:
    # The first signal of a worker, before its privilege check warns and long before
    # setup_logging: from here on warnings are log records, not raw stderr text.
    log_format = Settings.from_env().log_format
    logs.configure(log_format, level=(options or {}).get("loglevel") or "INFO")
    if log_format != "json":
        return
    # The banner is plain text on stdout; Worker.on_start prints it unless quiet.
    instance.quiet = True  # type: ignore[attr-defined]
    # Celery's signal handlers write "worker: Warm shutdown (MainProcess)" and the
    # like with os.write (safe in a handler, where logging's locks are not).
    from celery.apps import worker as celery_worker

    if callable(getattr(celery_worker, "safe_say", None)):
        celery_worker.safe_say = _say_as_json


def _say_as_json(msg: str, f: object = None) -> None:
    logs.raw_json_line(str(msg).strip(), level="warning", logger="celery.apps.worker")


app = make_app()
