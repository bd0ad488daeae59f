"""What a job is, once validated: immutable dataclasses and the limits they obey.

:mod:`harvester.core.job` builds these from a job file; every other layer reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# The largest page count a job may have, configured or announced by an API:
# far above any real API, far below what breaks arithmetic (Lua numbers are doubles).
MAX_PAGES = 100_000_000
STYLES = ("page", "offset", "cursor", "next_url", "link")
# Styles whose page count is known (or learnt from page 1) and so fan out to all
# workers at once; the others form a chain where each page names its successor.
FAN_OUT_STYLES = ("page", "offset")


@dataclass(frozen=True)
class PaginationSpec:
    style: str
    param: str = "page"
    start: int = 1
    pages: int | None = None
    total_pages_path: str | None = None
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = 100
    total: int | None = None
    total_path: str | None = None
    cursor_param: str = "cursor"
    cursor_path: str | None = None
    next_url_path: str | None = None
    records_path: str | None = None  # "" = the body itself is the array
    stop_on_empty: bool = False
    max_pages: int | None = None
    allow_hosts: tuple[str, ...] = ()
    page_size: int | None = None  # page style: records per page (with total_path/header)
    total_header: str | None = None  # page 1's response header holding the record total
    stop_on_status: tuple[int, ...] = ()  # a page answered with one of these ends the job


@dataclass(frozen=True)
class HttpSpec:
    timeout_connect: float = 5.0
    timeout_read: float = 30.0
    page_deadline: float = 600.0
    retries: int = 5
    backoff_factor: float = 0.5
    backoff_max: float = 60.0
    retry_statuses: tuple[int, ...] = (429, 500, 502, 503, 504)
    max_page_bytes: int = 4 << 30  # decoded bytes of one page; 0 = no cap


@dataclass(frozen=True)
class LimitsSpec:
    rate_per_second: float | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True)
class OutputSpec:
    dir: str
    mode: str = "pages"
    records_path: str | None = None
    # 1 (ISA-L, ~7x the speed of 6 for ~25% more bytes) .. 9; see storage.compressor.
    compress_level: int = 1
    body_format: str = "auto"  # auto (by Content-Type) | json | jsonl


@dataclass(frozen=True)
class JobSpec:
    name: str
    url: str
    pagination: PaginationSpec
    output: OutputSpec
    method: str = "GET"
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    http: HttpSpec = field(default_factory=HttpSpec)
    limits: LimitsSpec = field(default_factory=LimitsSpec)

    @property
    def templated(self) -> list[Any]:
        """The parts of the job that may hold ``${VAR}`` templates."""
        return [self.url, self.params, self.headers, self.json]

    @property
    def records_path(self) -> str | None:
        """Where the records are ("" = the body is the array), or None if not said."""
        if self.output.records_path is not None:
            return self.output.records_path
        return self.pagination.records_path

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, templates verbatim; :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        pagination = dict(data["pagination"])
        pagination["allow_hosts"] = tuple(pagination.get("allow_hosts") or ())
        pagination["stop_on_status"] = tuple(pagination.get("stop_on_status") or ())
        http = dict(data["http"])
        http["retry_statuses"] = tuple(http["retry_statuses"])
        return cls(
            name=data["name"], url=data["url"], method=data["method"],
            params=data["params"], headers=data["headers"], json=data["json"],
            pagination=PaginationSpec(**pagination), http=HttpSpec(**http),
            limits=LimitsSpec(**data["limits"]), output=OutputSpec(**data["output"]),
        )
