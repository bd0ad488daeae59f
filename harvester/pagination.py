"""Pagination rules: which request fetches page N and which pages follow it.

Pure functions over a :class:`~harvester.job.PaginationSpec`; nothing here
does I/O. Pages are numbered from 1 in the order the job walks them (the
"page key" of the ledger and the output), whatever the style sends on the wire.

Fan-out styles (``page`` and ``offset`` with a known or learnt total) keep a
*window* of at most ``window`` pages queued: the coordinator enqueues the first
window, and each page, once resolved, enqueues the page ``window`` further on.
So Redis holds ``window`` messages whatever the job's size, and a duplicate
delivery can at worst enqueue a duplicate that the ledger then drops.
"""

from __future__ import annotations

import math
from decimal import Decimal
from dataclasses import dataclass
from typing import Any

from .errors import PaginationError
from .job import FAN_OUT_STYLES, JobSpec


@dataclass(frozen=True)
class PageRequest:
    """One page's request, with ``${...}`` templates still unresolved."""

    method: str
    url: str
    params: dict[str, Any]
    json: Any = None


def is_fan_out(spec: JobSpec) -> bool:
    return spec.pagination.style in FAN_OUT_STYLES


def known_total(spec: JobSpec) -> int | None:
    """The job's page count when the job file fixes it, else ``None``."""
    p = spec.pagination
    total: int | None = None
    if p.style == "page" and p.pages is not None:
        total = p.pages
    elif p.style == "offset" and p.total is not None:
        total = math.ceil(p.total / p.limit)
    return _capped(total, p.max_pages)


def total_path(spec: JobSpec) -> str | None:
    """The body path page 1 reports the total at, when the total must be learnt."""
    p = spec.pagination
    if p.style == "page" and p.pages is None:
        return p.total_pages_path
    if p.style == "offset" and p.total is None:
        return p.total_path
    return None


def total_from_value(spec: JobSpec, value: Any) -> int:
    """The page count from the value found at :func:`total_path` on page 1."""
    p = spec.pagination
    # The body parser reads non-integers as Decimal (exact), e.g. 3.0 or 1.5e3.
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) \
            or not math.isfinite(value) or value < 0 or value != int(value):
        raise PaginationError(f"{total_path(spec)} must be a whole number >= 0, got {value!r}")
    total = int(value) if p.style == "page" else math.ceil(int(value) / p.limit)
    # An API that reports 0 pages still answered page 1: the job has that one page.
    return _capped(max(total, 1), p.max_pages) or 1


def _capped(total: int | None, max_pages: int | None) -> int | None:
    if total is None:
        return max_pages
    return min(total, max_pages) if max_pages is not None else total


def request_for(spec: JobSpec, page: int) -> PageRequest:
    """The request that fetches fan-out page ``page`` (1-based)."""
    p = spec.pagination
    if page < 1:
        raise ValueError(f"page keys start at 1, got {page}")
    if p.style == "page":
        wire = {p.param: p.start + page - 1}
    elif p.style == "offset":
        wire = {p.offset_param: (page - 1) * p.limit, p.limit_param: p.limit}
    else:
        raise PaginationError(f"style {p.style!r} pages are chained, not addressed by number")
    params = dict(spec.params)
    body = spec.json
    if spec.method == "POST" and isinstance(body, dict):
        # A POST search API takes its paging fields in the body it already has.
        body = {**body, **wire}
    else:
        params.update(wire)
    return PageRequest(method=spec.method, url=spec.url, params=params, json=body)


def first_pages(spec: JobSpec, window: int) -> list[int]:
    """Pages the coordinator enqueues when the job starts."""
    total = known_total(spec)
    if total is None:
        return [1]  # page 1 tells the total; its completion fans out the rest.
    return list(range(1, min(window, total) + 1))


def successors(spec: JobSpec, page: int, total: int | None, window: int) -> list[int]:
    """Pages to enqueue once ``page`` is resolved (committed or failed for good).

    ``total`` is the job's page count as the ledger knows it now (``None`` when
    page 1 failed before telling it).
    """
    if total is None:
        return []
    if page == 1 and known_total(spec) is None:
        return list(range(2, min(1 + window, total) + 1))
    following = page + window
    return [following] if following <= total else []
