"""One logging pipeline for the harvester and for Celery's own log lines.

structlog renders both with one renderer: our events carry job id, page and
attempt bound through ``structlog.contextvars`` and are rendered in structlog's
own chain, then leave through the stdlib handler as finished lines; stdlib
records (Celery, kombu) are rendered by ``ProcessorFormatter`` in the handler.
``HARVEST_LOG_FORMAT=json`` gives one JSON object per line: Python warnings are
captured into the pipeline, and a traceback is a field of its line, never lines
of its own.

Every line, of every library, leaves through :class:`RedactingFormatter`, which
replaces any secret this process has resolved (in any of its spellings) with
``***``: redaction at the edge, not at each call site.

An outage is news once, not once a second: :class:`QuietRepeats` lets the first
``redis.unavailable`` through and holds back its repeats (from every thread that
waits for Redis) until ``redis.available`` or a minute has passed, and does the
same for Celery's and kombu's lines that differ only in their numbers
("Trying again in 4.00 seconds... (2/None)").
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import structlog

from .core.secrets import scrub

# A condition the harvester logs when it starts -> the event that says it ended.
CONDITIONS = {"redis.unavailable": "redis.available"}
REPEAT_WINDOW = 60.0  # seconds a repeated line stays quiet before one goes through
# What varies between repeats of one third-party line: task ids and numbers.
_VARYING = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}|\d+")


class Rendered(str):
    """A harvester event's finished line, rendered in structlog's own chain."""


def _hand_to_stdlib(_logger: Any, _method: str, line: str) -> tuple[tuple, dict]:
    """structlog's last step: the rendered line is the stdlib record's message.

    Rendered here, an event skips what :class:`~structlog.stdlib.ProcessorFormatter`
    does for a record carrying its event dict (a copy of the record, a second
    processor chain): 83 -> 65 us a line in the console format, one line a page."""
    return (Rendered(line),), {}


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """The structlog formatter, with every rendered line (traceback included) scrubbed.
    A harvester event comes rendered already; a third-party record is rendered here."""

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, Rendered):
            return scrub(record.msg)
        return scrub(super().format(record))


class QuietRepeats(logging.Filter):
    """Drops repeats of a line for ``window`` seconds, then lets one through with
    ``repeated=N`` (how many it dropped meanwhile).

    Two kinds of repeat, both keyed per process:

    - a harvester *condition* event (a key of ``conditions``, e.g.
      ``redis.unavailable``), whatever its context: eight page threads and the
      heartbeat waiting for one Redis are one outage. Its end event (the value,
      ``redis.available``) is let through with the count and clears every key, so
      the next outage is reported at once. Used as a structlog processor.
    - a third-party record (Celery, kombu) at WARNING or above, keyed by logger,
      level and its message with every number and task id masked ("Couldn't ack
      '<id>'" for each task that finished while Redis was away). Used as a
      ``logging.Filter``.

    Other structlog events pass untouched: each names its own job and page.
    """

    def __init__(self, window: float = REPEAT_WINDOW, *,
                 conditions: Mapping[str, str] = CONDITIONS,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self.conditions = dict(conditions)
        self.ends = {end: start for start, end in conditions.items()}
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple, list[float | int]] = {}  # key -> [let through at, dropped]

    def _admit(self, key: tuple) -> int | None:
        """None to drop this line; else how many like it were dropped before it."""
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window:
                seen[1] += 1
                return None
            self._seen[key] = [now, 0]
            return int(seen[1]) if seen is not None else 0

    def _clear(self, condition: str) -> int:
        with self._lock:
            dropped = self._seen.get(("condition", condition), [0, 0])[1]
            self._seen.clear()
            return int(dropped)

    def __call__(self, _logger: Any, _method: str, event_dict: dict) -> dict:
        """structlog processor: the harvester's condition events."""
        event = event_dict.get("event")
        if event in self.ends:
            dropped = self._clear(self.ends[event])
            if dropped:
                event_dict["repeated"] = dropped
        elif event in self.conditions:
            dropped = self._admit(("condition", event))
            if dropped is None:
                raise structlog.DropEvent
            if dropped:
                event_dict["repeated"] = dropped
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        """logging.Filter: third-party records (structlog's own went through __call__)."""
        if isinstance(record.msg, Rendered) or record.levelno < logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the formatter's to report
            return True
        dropped = self._admit((record.name, record.levelno, _VARYING.sub("#", message)))
        if dropped is None:
            return False
        if dropped:
            record.repeated = dropped
        return True


# One per process: configure() may run more than once (the CLI, Celery's signals),
# and structlog loggers cached on first use keep the processors they were built with.
QUIET = QuietRepeats()


def configure(log_format: str = "console", level: int | str = logging.INFO) -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (structlog.processors.JSONRenderer() if log_format == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        # Below the level an event stops at once, before any processor (a page's
        # INFO line at HARVEST_LOG_LEVEL=WARNING then costs a level check, no more).
        processors=[structlog.stdlib.filter_by_level, *shared, QUIET,
                    structlog.processors.format_exc_info, renderer, _hand_to_stdlib],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = RedactingFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(["repeated"])],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(QUIET)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs full request URLs (secrets may sit in a query) at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    # Warnings become records of the "py.warnings" logger: one line, this format.
    logging.captureWarnings(True)
    if log_format == "json":
        # Whatever escapes every handler still leaves as one JSON line.
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_thread_crash


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    logging.getLogger("harvester").critical("uncaught exception", exc_info=(kind, value, tb))


def _log_thread_crash(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("harvester").error(
        f"thread {name} crashed",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))  # type: ignore[arg-type]


def raw_json_line(event: str, *, level: str = "info", logger: str = "harvester",
                  fd: int = 2) -> None:
    """Write one JSON log line straight to ``fd``, past logging and its locks: for
    the few places that must not log normally (signal handlers)."""
    line = json.dumps({"event": scrub(event), "level": level, "logger": logger,
                       "timestamp": datetime.now(timezone.utc).isoformat()
                       .replace("+00:00", "Z")})
    try:
        os.write(fd, line.encode() + b"\n")
    except OSError:
        pass
