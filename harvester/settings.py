"""Process-wide settings, read once from the environment.

Nothing here is part of a job file: these tune the machinery (how many pages
stay queued, how long a lease lives) and are the same for every job a worker runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .core.runs import default_run_pages

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    redis_url: str
    # Pages queued or running at once per job: Redis holds about 1.2 KB per
    # queued Celery message, so this bounds broker memory whatever the job's size.
    window: int
    # A running page's lease; its worker renews it every lease/3 s. A worker
    # that dies loses its pages to the reaper once the lease ends.
    lease_seconds: float
    # How long a page may wait in the queue before the reaper re-sends it.
    queued_seconds: float
    # How long a ledger call waits for Redis to come back before giving up.
    redis_wait_seconds: float
    # kombu's visibility timeout: must exceed the longest page_deadline, or a
    # healthy long page would be redelivered while it runs.
    visibility_timeout: float
    # Target size of a sealed part file.
    part_bytes: int
    fsync: bool
    home: Path
    log_format: str
    # How long a final job's ledger stays in Redis (0 = for ever); then it expires.
    keep_seconds: float = 30 * 86400
    # Most pages one task message carries (see harvester.core.runs); 1 = a message a page.
    run_pages: int = 32

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(os.environ.get("HARVEST_HOME") or
                    Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
                    / "harvester")
        window = _int("HARVEST_WINDOW", 1024)
        return cls(
            redis_url=os.environ.get("HARVEST_REDIS_URL") or DEFAULT_REDIS_URL,
            window=window,
            lease_seconds=_float("HARVEST_LEASE_SECONDS", 15.0),
            queued_seconds=_float("HARVEST_QUEUED_SECONDS", 900.0),
            redis_wait_seconds=_float("HARVEST_REDIS_WAIT", 120.0),
            visibility_timeout=_float("HARVEST_VISIBILITY_TIMEOUT", 3600.0),
            part_bytes=_int("HARVEST_PART_BYTES", 256 << 20),
            fsync=os.environ.get("HARVEST_FSYNC", "1") != "0",
            home=home,
            log_format=os.environ.get("HARVEST_LOG_FORMAT", "console"),
            keep_seconds=_float("HARVEST_KEEP_DAYS", 30.0) * 86400,
            run_pages=_int("HARVEST_RUN_PAGES", default_run_pages(window)),
        )


def ledger_for(settings: Settings):
    """The ledger these settings describe (imported late: settings stay I/O-free)."""
    from .edges.ledger import Ledger

    return Ledger.from_url(settings.redis_url, lease_seconds=settings.lease_seconds,
                           queued_seconds=settings.queued_seconds,
                           wait_seconds=settings.redis_wait_seconds,
                           keep_seconds=settings.keep_seconds)
