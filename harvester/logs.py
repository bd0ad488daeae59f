"""One logging pipeline for the harvester and for Celery's own log lines.

structlog renders both: our events carry job id, page and attempt bound through
``structlog.contextvars``; stdlib records (Celery, kombu) pass through the same
processors via ``ProcessorFormatter``. ``HARVEST_LOG_FORMAT=json`` gives one
JSON object per line.

Every line, of every library, leaves through :class:`RedactingFormatter`, which
replaces any secret this process has resolved (in any of its spellings) with
``***``: redaction at the edge, not at each call site.
"""

from __future__ import annotations

import logging
import sys

import structlog

from .secrets import scrub


class RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """The structlog formatter, with every rendered line (traceback included) scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


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
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = RedactingFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # urllib3 logs full request URLs (secrets may sit in a query) at DEBUG.
    logging.getLogger("urllib3").setLevel(logging.WARNING)

