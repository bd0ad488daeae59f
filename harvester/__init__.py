"""Harvester: a distributed harvester for paginated HTTP JSON APIs.

The Python API (see :mod:`harvester.client`)::

    from harvester import Harvester, Job
"""

from __future__ import annotations

from typing import Any

__all__ = ["Harvester", "Job", "JobStatus", "SealedOutput", "HarvesterError"]


def __getattr__(name: str) -> Any:
    # Imported on first use: a worker or `harvest --help` pays for none of it.
    if name in ("Harvester", "Job", "JobStatus"):
        from . import client

        return getattr(client, name)
    if name == "SealedOutput":
        from .engine.output import SealedOutput

        return SealedOutput
    if name == "HarvesterError":
        from .errors import HarvesterError

        return HarvesterError
    raise AttributeError(f"module 'harvester' has no attribute {name!r}")
