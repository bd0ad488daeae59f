"""Pagination rules: which request fetches page N and what follows a page.

Pure functions over a :class:`~harvester.job.JobSpec`; nothing here does I/O.
Pages are numbered from 1 in the order the job walks them (the "page key" of
the ledger and the output), whatever the style sends on the wire.

Two shapes of job:

- *fan-out*: ``page`` and ``offset`` with a known total (or one learnt from
  page 1). Every page's request follows from its number, so all workers fetch
  at once.
- *chain*: ``cursor``, ``next_url`` and ``link``, and ``page``/``offset`` whose end
  is only known from the data (``stop_on_empty``). Each page names its
  successor (a :class:`Link`), found while the page streams; the successor is
  enqueued only once the page is committed.

Stop rules, in this order, after a page is read: (1) an explicit end: no next
link, a null/missing/"" cursor or next URL, or past the total; (2)
``stop_on_empty``: a page whose record list is empty ends the job (and is
committed); (3) ``max_pages``; (4) a cursor or next URL seen before in the job
is an error that fails the page (checked by the ledger), never a loop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

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
    """True when every page's request follows from its number and the total is knowable.

    ``stop_on_empty`` makes any job a chain: the end is only known from the data,
    and pages past the empty one must never be requested.
    """
    return spec.pagination.style in FAN_OUT_STYLES and not spec.pagination.stop_on_empty and (
        known_total(spec) is not None or total_path(spec) is not None)


@dataclass(frozen=True)
class Link:
    """How to ask for a chained page: a cursor, a URL, or (page/offset) a number."""

    cursor: str | None = None
    url: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("cursor", self.cursor), ("url", self.url)) if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, str] | None) -> "Link | None":
        return cls(**data) if data else None

    @property
    def identity(self) -> str | None:
        """What must never repeat within a job (the loop check)."""
        if self.cursor is not None:
            return f"cursor:{self.cursor}"
        if self.url is not None:
            return f"url:{self.url}"
        return None


@dataclass(frozen=True)
class Next:
    """What a read page says about the job: a successor, or why the job ends here."""

    link: Link | None
    end_reason: str | None = None


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


def request_for(spec: JobSpec, page: int, link: Link | None = None) -> PageRequest:
    """The request that fetches page ``page`` (1-based); chained pages need their ``link``."""
    p = spec.pagination
    if page < 1:
        raise ValueError(f"page keys start at 1, got {page}")
    if p.style in ("next_url", "link"):
        if page == 1:
            return PageRequest(method=spec.method, url=spec.url, params=dict(spec.params),
                               json=spec.json)
        if link is None or link.url is None:
            raise PaginationError(f"page {page} has no next URL recorded")
        return _follow_url(spec, link.url)
    if p.style == "cursor":
        if page > 1 and (link is None or link.cursor is None):
            raise PaginationError(f"page {page} has no cursor recorded")
        wire = {p.cursor_param: link.cursor} if page > 1 else {}
    elif p.style == "page":
        wire = {p.param: p.start + page - 1}
    else:
        wire = {p.offset_param: (page - 1) * p.limit, p.limit_param: p.limit}
    params = dict(spec.params)
    body = spec.json
    if spec.method == "POST" and isinstance(body, dict):
        # A POST search API takes its paging fields in the body it already has.
        body = {**body, **wire}
    else:
        params.update(wire)
    return PageRequest(method=spec.method, url=spec.url, params=params, json=body)




def _follow_url(spec: JobSpec, url: str) -> PageRequest:
    """A next URL as given, plus the job's params it does not already carry."""
    present = {key for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    extra = {k: v for k, v in spec.params.items() if k not in present}
    # A next URL is a GET of what the API named, whatever the first request was.
    return PageRequest(method="GET", url=url, params=extra, json=None)


def is_chain(spec: JobSpec) -> bool:
    return not is_fan_out(spec)


def wanted_values(spec: JobSpec, page: int) -> list[str]:
    """Body paths to read while page ``page`` streams."""
    p = spec.pagination
    paths = []
    if page == 1 and total_path(spec) is not None and is_fan_out(spec):
        paths.append(total_path(spec))
    if p.style == "cursor":
        paths.append(p.cursor_path)
    elif p.style == "next_url":
        paths.append(p.next_url_path)
    return paths


def counts_records(spec: JobSpec) -> bool:
    """Whether a page's records must be counted (records mode, stop_on_empty)."""
    return spec.output.mode == "records" or spec.pagination.stop_on_empty


def next_after(spec: JobSpec, page: int, url: str, values: dict[str, Any],
               link_header: str | None, records: int | None) -> Next:
    """Apply the stop rules (see the module docstring) to a read chained page.

    ``url`` is the page's own (resolved) URL, against which relative links are
    resolved; ``records`` is its record count when counted.
    """
    p = spec.pagination
    link: Link | None = None
    if p.style == "cursor":
        cursor = values.get(p.cursor_path)
        if cursor is None or cursor == "" or isinstance(cursor, (dict, list)):
            return Next(None, f"no cursor at {p.cursor_path}")
        link = Link(cursor=str(cursor) if not isinstance(cursor, bool) else str(cursor).lower())
    elif p.style == "next_url":
        target = values.get(p.next_url_path)
        if not isinstance(target, str) or not target:
            return Next(None, f"no next URL at {p.next_url_path}")
        link = Link(url=urljoin(url, target))
    elif p.style == "link":
        target = next_link(link_header)
        if target is None:
            return Next(None, 'no Link rel="next"')
        link = Link(url=urljoin(url, target))
    if p.stop_on_empty and records == 0:
        return Next(None, "empty page (stop_on_empty)")
    if p.max_pages is not None and page >= p.max_pages:
        return Next(None, f"max_pages = {p.max_pages}")
    return Next(link or Link())


def origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    return scheme, (parts.hostname or "").lower(), port


def origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


def check_origin(spec: JobSpec, url: str, what: str = "next page") -> None:
    """Refuse a request to any origin but the job's own or an ``allow_hosts`` entry."""
    if origin(url) == origin(spec.url):
        return
    host = origin(url)[1]
    allowed = {h.lower() for h in spec.pagination.allow_hosts}
    if host in allowed and origin(url)[0] in ("http", "https"):
        return
    raise PaginationError(
        f"{what} is on another origin: {origin_text(url)} is not the job's origin"
        f" {origin_text(spec.url)}; no request was sent (list the host in"
        " pagination.allow_hosts to follow it)", url=url)


# RFC 8288: link-value = "<" URI-Reference ">" *( OWS ";" OWS link-param )
_LINK_VALUE = re.compile(
    r'\s*<([^>]*)>((?:\s*;\s*[^;,=\s"]+\s*(?:=\s*(?:"(?:[^"\\]|\\.)*"|[^;,]*))?)*)')
_LINK_PARAM = re.compile(r';\s*([^=;,\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^;,]*))?')


def parse_link_header(value: str | None) -> list[tuple[str, dict[str, str]]]:
    """``Link`` header -> ``[(target, {param: value})]``; quoted or bare values, many links."""
    links = []
    position = 0
    text = value or ""
    while position < len(text):
        match = _LINK_VALUE.match(text, position)
        if match is None:
            break
        params = {}
        for param in _LINK_PARAM.finditer(match.group(2)):
            raw = (param.group(2) or "").strip()
            if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            params.setdefault(param.group(1).lower(), raw)
        links.append((match.group(1).strip(), params))
        position = match.end()
        comma = text.find(",", position)
        if comma < 0:
            break
        position = comma + 1
    return links


def next_link(value: str | None) -> str | None:
    """The target of the first link whose rel (a space-separated list) holds "next"."""
    for target, params in parse_link_header(value):
        if "next" in params.get("rel", "").lower().split():
            return target
    return None
