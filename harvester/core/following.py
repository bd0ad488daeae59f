"""What a page says follows it, read off its response: pure rules, no I/O.

Page 1 of a fan-out job may tell the job's total (a header or a body value) and
whether ``max_pages`` cut it short; a short page of a fan-out job may say the API
caps its page size; a chain page names its successor (a cursor, a next URL, a Link
header) or ends the chain. :func:`what_follows` turns one response into one
:class:`Following`, which the ledger records with the page's commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from ..errors import PaginationError
from . import pagination
from .pagebody import BodyResult
from .pagination import Link
from .secrets import SecretSet
from .spec import JobSpec


@dataclass(frozen=True)
class Following:
    """What a committed page tells the ledger about the job."""

    total: int | None = None  # the job's page count, when this page tells it
    close: bool = False  # no page can follow this one
    next_link: Link | None = None  # the successor of a chained page
    end_reason: str | None = None  # why a chain ends here
    capped: str | None = None  # max_pages ended the job while the API had more
    abort: str | None = None  # the job cannot go on (the API caps its page size)


NOTHING_FOLLOWS = Following()


def what_follows(spec: JobSpec, page: int, link: Link | None, total: int | None, *,
                 url: str, headers: Mapping[str, str], result: BodyResult,
                 secrets: SecretSet) -> Following:
    """What page ``page`` says about the job: its total, its successor, or its end.

    ``url`` is the response's final URL (a relative next link is resolved against
    it), ``headers`` its headers (a case-insensitive mapping, as the response's),
    ``total`` the job's page count when known.
    """
    if pagination.is_fan_out(spec):
        capped = None
        if page == 1 and pagination.learns_total(spec):
            total, announced = _learnt_total(spec, headers, result)
            if pagination.announced_over_cap(spec, announced):
                capped = (f"max_pages = {spec.pagination.max_pages} reached while the API"
                          f" announced {announced:,} pages")
        elif page == 1 and pagination.capped_from_the_start(spec):
            capped = f"max_pages = {spec.pagination.max_pages} is below the job's own total"
        short = pagination.short_page(spec, page, result.records, total)
        # A total learnt from page 1 is final: no page beyond it can appear.
        return Following(total=total if page == 1 and pagination.learns_total(spec) else None,
                         close=page == 1 and pagination.learns_total(spec), capped=capped,
                         abort=short)
    following = pagination.next_after(spec, page, url, result.values, headers.get("Link"),
                                      result.records, secrets)
    abort = None
    if link is not None and link.short is not None and (result.records or 0) > 0:
        abort = pagination.cap_message(spec, page - 1, link.short)
    if following.link is None:
        return Following(close=True, end_reason=following.end_reason, abort=abort,
                         capped=following.end_reason if following.capped else None)
    return Following(total=page + 1, next_link=following.link, abort=abort)


def _learnt_total(spec: JobSpec, headers: Mapping[str, str],
                  result: BodyResult) -> tuple[int, int]:
    """Page 1's total, capped by max_pages, and the page count the API announced."""
    uncapped = spec if spec.pagination.max_pages is None else replace(
        spec, pagination=replace(spec.pagination, max_pages=None))
    header = pagination.total_header(spec)
    if header is not None:
        value = headers.get(header)
        return (pagination.total_from_header(spec, value),
                pagination.total_from_header(uncapped, value))
    path = pagination.total_path(spec)
    if path not in result.values:
        raise PaginationError(f"page 1 has no value at {path!r}")
    value = result.values[path]
    return pagination.total_from_value(spec, value), pagination.total_from_value(uncapped, value)
