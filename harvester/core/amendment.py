"""``harvest retry JOB_ID --job FIXED.toml``: which keys a retry may change.

A retry re-runs pages of the same job into the same output, so page N must
still mean the same request: the URL, method, params, body, pagination and
output stay as the job began. What a retry may fix is how the request is sent
and how hard it is tried: headers (a new token), ``[http]`` (timeouts,
retries, max_page_bytes), ``[limits]`` and the compression level of the new
parts. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import JobSpecError
from .spec import JobSpec

# Dotted keys a retry may change; everything else must equal the running job's.
AMENDABLE = frozenset({"headers", "http", "limits", "output.compress_level"})
# Not part of what a page requests, nor kept: the job keeps its name and id.
IGNORED = frozenset({"name"})


def amend(stored: JobSpec, fixed: JobSpec, *, job_id: str, path: str = "<job>") -> JobSpec:
    """The stored spec with ``fixed``'s amendable parts; JobSpecError naming the
    first key that would change what a page requests."""
    for key, old, new in _leaves(asdict(stored), asdict(_resolved(fixed, stored))):
        if key in IGNORED or key in AMENDABLE or key.split(".")[0] in AMENDABLE:
            continue
        if old != new:
            raise JobSpecError(
                f"differs from job {job_id}'s: a retry may change headers, [http], [limits]"
                " and output.compress_level, not what a page requests or where it goes."
                " Run the changed job as a new job instead", path=path,
                key=_toml_key(key))
    return replace(stored, headers=dict(fixed.headers), http=fixed.http, limits=fixed.limits,
                   output=replace(stored.output, compress_level=fixed.output.compress_level))


def _resolved(fixed: JobSpec, stored: JobSpec) -> JobSpec:
    # The stored dir is absolute (resolved at submit); the file's may be relative
    # to where the command runs, as it was for 'harvest run'.
    directory = fixed.output.dir
    if "://" not in directory and Path(directory).expanduser().resolve() == \
            Path(stored.output.dir):
        directory = stored.output.dir
    return replace(fixed, output=replace(fixed.output, dir=directory))


def _leaves(old: dict[str, Any], new: dict[str, Any], prefix: str = ""):
    for name in old:
        key = f"{prefix}{name}"
        if isinstance(old[name], dict) and isinstance(new.get(name), dict) and \
                name not in ("params", "headers", "json"):
            yield from _leaves(old[name], new[name], f"{key}.")
        else:
            yield key, old[name], new.get(name)


def _toml_key(key: str) -> str:
    """A JobSpec path as the job file spells it (url -> job.url)."""
    return key if key.split(".")[0] in ("pagination", "http", "limits", "output") \
        else f"job.{key}"
