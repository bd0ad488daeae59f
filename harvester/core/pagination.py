"""Pagination rules: which request fetches page N and what follows a page.

Pure functions over a :class:`~harvester.core.job.JobSpec`; nothing here does I/O.
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

from ..errors import PaginationError, UnsafeURL
from .scan import Unreadable
from .secrets import SecretSet, Template
from .spec import FAN_OUT_STYLES, MAX_PAGES, JobSpec


@dataclass(frozen=True)
class PageRequest:
    """One page's request, its secrets still holes (``${...}``) in templates.

    ``url`` is a :class:`Template` (a job-file string is parsed into one); param
    values are job-file data or, for a cursor, a captured :class:`Template`.
    """

    method: str
    url: Template
    params: dict[str, Any]
    json: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.url, str):
            object.__setattr__(self, "url", Template.parse(self.url))


def is_fan_out(spec: JobSpec) -> bool:
    """True when every page's request follows from its number and the total is knowable.

    ``stop_on_empty`` and ``stop_on_status`` make any job a chain: the end is only
    known from the data, and pages past the last one must never be requested.
    """
    p = spec.pagination
    return p.style in FAN_OUT_STYLES and not p.stop_on_empty and not p.stop_on_status and (
        known_total(spec) is not None or learns_total(spec))


@dataclass(frozen=True)
class Link:
    """How to ask for a chained page: a cursor, a URL, or (page/offset) a number.

    Both come from the API, so both are :class:`Template` captures: a job secret
    the API echoed is a hole, never stored in clear. Plain strings are taken
    as literal text.
    """

    cursor: Template | None = None
    url: Template | None = None
    # Numbered chains: the record count of the page before, when it was short of a
    # full page; a page with records after it shows the API caps the page size.
    short: int | None = None

    def __post_init__(self) -> None:
        for name in ("cursor", "url"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Template.literal(value))

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {k: v.to_json() for k, v in (("cursor", self.cursor),
                                                             ("url", self.url)) if v is not None}
        if self.short is not None:
            found["short"] = self.short
        return found

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Link | None":
        if not data:
            return None
        return cls(**{k: (v if k == "short" else Template.from_json(v)) for k, v in data.items()})

    @property
    def identity(self) -> str | None:
        """What must never repeat within a job (the loop check)."""
        if self.cursor is not None:
            return f"cursor:{self.cursor.render()}"
        if self.url is not None:
            return f"url:{self.url.render()}"
        return None


@dataclass(frozen=True)
class Next:
    """What a read page says about the job: a successor, or why the job ends here."""

    link: Link | None
    end_reason: str | None = None
    capped: bool = False  # max_pages ended the job while the API had more


def known_total(spec: JobSpec) -> int | None:
    """The job's page count when the job file fixes it, else ``None``."""
    p = spec.pagination
    total: int | None = None
    if p.style == "page" and p.pages is not None:
        total = p.pages
    elif p.style == "offset" and p.total is not None:
        total = math.ceil(p.total / p.limit)
    return _capped(total, p.max_pages)


def capped_from_the_start(spec: JobSpec) -> bool:
    """The job file's own total is more than max_pages lets the job fetch."""
    p = spec.pagination
    if p.max_pages is None:
        return False
    if p.style == "page" and p.pages is not None:
        return p.pages > p.max_pages
    if p.style == "offset" and p.total is not None:
        return math.ceil(p.total / p.limit) > p.max_pages
    return False


def total_path(spec: JobSpec) -> str | None:
    """The body path page 1 reports the total at, when the total must be learnt."""
    p = spec.pagination
    if p.style == "page" and p.pages is None:
        return p.total_pages_path or p.total_path
    if p.style == "offset" and p.total is None:
        return p.total_path
    return None


def total_header(spec: JobSpec) -> str | None:
    """The response header page 1 reports the record total in, when one is named."""
    p = spec.pagination
    return p.total_header if p.style in FAN_OUT_STYLES else None


def learns_total(spec: JobSpec) -> bool:
    return total_path(spec) is not None or total_header(spec) is not None


def page_size(spec: JobSpec) -> int | None:
    """Records a full page holds, when the job says (offset: limit; page: page_size)."""
    p = spec.pagination
    return p.limit if p.style == "offset" else p.page_size if p.style == "page" else None


def total_from_header(spec: JobSpec, value: str | None) -> int:
    """The page count from page 1's :func:`total_header` (a record count)."""
    name = total_header(spec)
    if value is None:
        raise PaginationError(f"page 1 has no {name} header")
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 30):
        raise PaginationError(f"header {name} = {_shown(text)} is not a whole number >= 0")
    return total_from_value(spec, int(text), what=f"header {name}")


def total_from_value(spec: JobSpec, value: Any, what: str | None = None) -> int:
    """The page count from the total page 1 reports (at :func:`total_path`, or a header).

    The value is hostile: anything but a whole number from 0 to what
    :data:`MAX_PAGES` pages hold fails page 1 with the reason.
    """
    p = spec.pagination
    path = what or total_path(spec)
    if isinstance(value, Unreadable):
        raise PaginationError(f"the total at {path} cannot be read: {value.reason}")
    # The body parser reads non-integers as Decimal (exact), e.g. 3.0 or 1.5e3.
    finite = value.is_finite() if isinstance(value, Decimal) else \
        isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)) \
            or not finite or value < 0:
        raise PaginationError(f"{path} must be a whole number >= 0, got {_shown(value)}")
    # A count of pages, or of records (offset's limit or page's page_size per page).
    per_page = 1 if (p.style == "page" and p.total_pages_path) else page_size(spec) or 1
    # Compared before int(): int() of 1e999999999 would take the worker's memory.
    if value > Decimal(MAX_PAGES) * per_page:
        raise PaginationError(
            f"{path} = {_shown(value)} announces more than {MAX_PAGES:,} pages; the harvester"
            " refuses totals that large (an API error, or set pagination.pages / total and"
            " max_pages yourself)")
    if value != int(value):
        raise PaginationError(f"{path} must be a whole number >= 0, got {_shown(value)}")
    total = math.ceil(int(value) / per_page)
    # An API that reports 0 pages still answered page 1: the job has that one page.
    return _capped(max(total, 1), p.max_pages) or 1


def announced_over_cap(spec: JobSpec, pages: int) -> bool:
    """Whether a learnt total of ``pages`` (before capping) exceeds max_pages."""
    return spec.pagination.max_pages is not None and pages > spec.pagination.max_pages


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, Decimal) else str(value)
    return text if len(text) <= 80 else text[:80] + "..."


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
    wire: dict[str, Any]
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




def _follow_url(spec: JobSpec, url: Template) -> PageRequest:
    """A next URL as given, plus the job's params it does not already carry."""
    try:
        query = urlsplit(url.render()).query
    except ValueError as exc:
        raise UnsafeURL(f"the next URL cannot be parsed: {exc}") from None
    present = {key for key, _ in parse_qsl(query, keep_blank_values=True)}
    extra = {k: v for k, v in spec.params.items() if k not in present}
    # A next URL is a GET of what the API named, whatever the first request was.
    return PageRequest(method="GET", url=url, params=extra, json=None)


def is_chain(spec: JobSpec) -> bool:
    return not is_fan_out(spec)


def wanted_values(spec: JobSpec, page: int) -> list[str]:
    """Body paths to read while page ``page`` streams."""
    p = spec.pagination
    paths = []
    path = total_path(spec)
    if page == 1 and path is not None and is_fan_out(spec):
        paths.append(path)
    if p.style == "cursor":
        paths.append(p.cursor_path)
    elif p.style == "next_url":
        paths.append(p.next_url_path)
    return paths


def counts_records(spec: JobSpec) -> bool:
    """Whether a page's records must be counted: records mode, stop_on_empty, or a
    page size to check (an API that caps it would otherwise skip records)."""
    return spec.output.mode == "records" or spec.pagination.stop_on_empty or (
        page_size(spec) is not None and spec.records_path is not None)


def short_page(spec: JobSpec, page: int, records: int | None, total: int | None) -> str | None:
    """Why page ``page`` shows the API capped its page size, or None.

    A page before the last (``total``, when known) holding fewer records than a
    full page means records between it and the next page were skipped.
    """
    size = page_size(spec)
    if size is None or records is None or total is None or page >= total or records >= size:
        return None
    return cap_message(spec, page, records)


def cap_message(spec: JobSpec, page: int, records: int) -> str:
    key = "limit" if spec.pagination.style == "offset" else "page_size"
    size = page_size(spec)
    fix = f"pagination.{key} = {records}" if records else f"a smaller pagination.{key}"
    return (f"page {page} holds {records} records where a full page holds {size}"
            f" (pagination.{key}), and it is not the last page: the API caps its page size,"
            f" so records were skipped. Set {fix} (and the request parameter the API"
            " reads, if any) and run the job again into a new output dir.")


def next_after(spec: JobSpec, page: int, url: str, values: dict[str, Any],
               link_header: str | None, records: int | None,
               secrets: SecretSet | None = None) -> Next:
    """Apply the stop rules (see the module docstring) to a read chained page.

    ``url`` is the page's own (resolved) URL, against which relative links are
    resolved; ``records`` is its record count when counted. Only null, a missing
    value or "" ends a chain: a value of the wrong type, or one too large to
    read, raises :class:`PaginationError`; it never reads as the end. The link
    is captured with ``secrets`` (see :meth:`SecretSet.capture`).
    """
    p = spec.pagination
    secrets = secrets or SecretSet({})
    link: Link | None = None
    if p.style == "cursor":
        cursor = _chain_value(values, p.cursor_path, "cursor")
        if cursor is None:
            return Next(None, f"no cursor at {p.cursor_path}")
        if isinstance(cursor, (dict, list, bool)):
            raise PaginationError(f"the cursor at {p.cursor_path} is {_json_type(cursor)}, not a"
                                  " string or number: cannot be sent")
        link = Link(cursor=secrets.capture(str(cursor)))
    elif p.style == "next_url":
        target = _chain_value(values, p.next_url_path, "next URL")
        if target is None:
            return Next(None, f"no next URL at {p.next_url_path}")
        if not isinstance(target, str):
            raise PaginationError(f"the next URL at {p.next_url_path} is {_json_type(target)},"
                                  " not a string")
        link = Link(url=secrets.capture(joined_url(url, target)))
    elif p.style == "link":
        target = next_link(link_header)
        if target is None:
            if link_header and re.search(r"next", link_header, re.I):
                raise PaginationError('the Link header mentions "next" but cannot be parsed;'
                                      " refusing to read it as the end")
            return Next(None, 'no Link rel="next"')
        link = Link(url=secrets.capture(joined_url(url, target)))
    if p.stop_on_empty and records == 0:
        return Next(None, "empty page (stop_on_empty)")
    if p.max_pages is not None and page >= p.max_pages:
        return Next(None, f"max_pages = {p.max_pages} reached while the API had more pages",
                    capped=True)
    if link is None:  # a numbered chain (page/offset): remember a short page
        size = page_size(spec)
        short = records if size is not None and records is not None and records < size else None
        return Next(Link(short=short))
    return Next(link)


def _chain_value(values: dict[str, Any], path: str, what: str) -> Any:
    """The value at ``path``, None for null / missing / "" (the end of a chain)."""
    value = values.get(path)
    if isinstance(value, Unreadable):
        raise PaginationError(f"the {what} at {path} cannot be read ({value.reason}); refusing"
                              " to read it as the end of the chain")
    return None if value is None or value == "" else value


def joined_url(base: str, target: str) -> str:
    """``target`` resolved against the page's URL; hostile text is kept as sent
    (the request check refuses it, failing the page it leads to)."""
    if "\\" in target or any(ord(c) < 0x21 or c == "\x7f" for c in target):
        return target
    try:
        return urljoin(base, target)
    except ValueError:
        return target


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean"}.get(type(value),
                                                                        type(value).__name__)


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
