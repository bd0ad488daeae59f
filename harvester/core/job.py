"""The job file: TOML in, a validated, immutable :class:`~harvester.core.spec.JobSpec` out.

Validation is pure and complete before anything touches Redis: unknown keys,
wrong types, impossible values and missing keys raise :class:`JobSpecError`
naming the file and the dotted key. ``${ENV}`` templates are kept verbatim
(see :mod:`harvester.core.secrets`).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import replace
from datetime import date, time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import JobSpecError, UnsafeURL
from .layout import is_object_store, split_s3_url
from .origin import MAX_URL_CHARS, check_api_url
from .secrets import TEMPLATE
from .spec import (
    MAX_PAGES,
    STYLES,
    HttpSpec,
    JobSpec,
    LimitsSpec,
    OutputSpec,
    PaginationSpec,
)

JOB_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A job file is copied into Redis, the manifest and every worker: keep it small.
MAX_JOB_FILE_BYTES = 1 << 20
MAX_VALUE_CHARS = 64 * 1024  # one header, param or json string


# ---------------------------------------------------------------- validation

Check = Callable[[Any], str | None]  # returns a complaint, or None when fine


def _positive(value: Any) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    if not math.isfinite(value):
        return "must be a finite number"
    return None if value >= 0 else "must be 0 or more"


def _one_of(*choices: str) -> Check:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}"


def _page_count(value: Any) -> str | None:
    return _positive(value) or (None if value <= MAX_PAGES else
                                f"must be at most {MAX_PAGES:,} pages")


def _in_range(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}"


def _json_path(value: str) -> str | None:
    parts = value.split(".")
    return None if all(parts) else "must be a dotted path like 'meta.total_pages'"


def _records_path(value: str) -> str | None:
    return None if value == "" else _json_path(value)


def _header_name(value: str) -> str | None:
    return None if _HEADER_NAME.fullmatch(value) else "must be an HTTP header name"


def _status_list(value: list) -> str | None:
    if not all(isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in value):
        return "must list HTTP status codes (100-599)"
    return None


# key -> (types, required, check). Python's bool is an int, so types are checked
# with _type_ok, which refuses True/False where a number is wanted.
Schema = dict[str, tuple[tuple[type, ...], bool, Check | None]]
NUMBER = (int, float)

SECTIONS: dict[str, Schema] = {
    "job": {
        "name": ((str,), True, lambda v: None if JOB_NAME.fullmatch(v) else
                 "must match [a-z0-9][a-z0-9_-]{0,63} (lower case, no '/' or '..')"),
        "url": ((str,), True, None),
        "method": ((str,), False, _one_of("GET", "POST")),
        "params": ((dict,), False, None),
        "headers": ((dict,), False, None),
        "json": ((dict, list), False, None),
    },
    "pagination": {
        "style": ((str,), True, _one_of(*STYLES)),
        "param": ((str,), False, None),
        "start": ((int,), False, _non_negative),
        "pages": ((int,), False, _page_count),
        "total_pages_path": ((str,), False, _json_path),
        "offset_param": ((str,), False, None),
        "limit_param": ((str,), False, None),
        "limit": ((int,), False, _positive),
        "total": ((int,), False, _non_negative),
        "total_path": ((str,), False, _json_path),
        "cursor_param": ((str,), False, None),
        "cursor_path": ((str,), False, _json_path),
        "next_url_path": ((str,), False, _json_path),
        "records_path": ((str,), False, _records_path),
        "stop_on_empty": ((bool,), False, None),
        "max_pages": ((int,), False, _page_count),
        "allow_hosts": ((list,), False, None),
        "page_size": ((int,), False, _positive),
        "total_header": ((str,), False, _header_name),
        "stop_on_status": ((list,), False, _status_list),
    },
    "http": {
        "timeout_connect": (NUMBER, False, _positive),
        "timeout_read": (NUMBER, False, _positive),
        "page_deadline": (NUMBER, False, _positive),
        "retries": ((int,), False, _in_range(0, 100)),
        "backoff_factor": (NUMBER, False, _non_negative),
        "backoff_max": (NUMBER, False, _non_negative),
        "retry_statuses": ((list,), False, _status_list),
        "max_page_bytes": ((int,), False, _non_negative),
    },
    "limits": {
        "rate_per_second": (NUMBER, False, _positive),
        "max_in_flight": ((int,), False, _positive),
    },
    "output": {
        "dir": ((str,), True, lambda v: None if v.strip() else "must not be empty"),
        "mode": ((str,), False, _one_of("pages", "records")),
        "records_path": ((str,), False, _records_path),
        "compress_level": ((int,), False, _in_range(1, 9)),
        "body_format": ((str,), False, _one_of("auto", "json", "jsonl")),
    },
}
REQUIRED_SECTIONS = ("job", "pagination", "output")


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a table", list: "an array"}
    if types == NUMBER:
        return "a number"
    return " or ".join(names[t] for t in types)


def _check_section(name: str, table: Any, path: str) -> dict[str, Any]:
    schema = SECTIONS[name]
    if not isinstance(table, dict):
        raise JobSpecError(f"must be a table [{name}]", path=path, key=name)
    for key in table:
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise JobSpecError(f"unknown key (known keys: {known})", path=path, key=f"{name}.{key}")
    for key, (types, required, check) in schema.items():
        dotted = f"{name}.{key}"
        if key not in table:
            if required:
                raise JobSpecError("is required", path=path, key=dotted)
            continue
        value = table[key]
        if not _type_ok(value, types):
            raise JobSpecError(f"must be {_type_names(types)}, not {type(value).__name__}",
                               path=path, key=dotted)
        complaint = check(value) if check else None
        if complaint:
            raise JobSpecError(f"{complaint} (got {value!r})", path=path, key=dotted)
    return dict(table)


def _check_url(url: str, path: str, key: str) -> None:
    # Templates may sit in the URL; check its shape with them filled in.
    if len(url) > MAX_URL_CHARS:
        raise JobSpecError(f"is {len(url):,} characters long, over {MAX_URL_CHARS:,}",
                           path=path, key=key)
    probe_text = TEMPLATE.sub("x", url)
    try:
        probe = urlsplit(probe_text)
        probe.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise JobSpecError(f"is not a valid URL: {exc} (got {url!r})", path=path,
                           key=key) from None
    if probe.scheme not in ("http", "https") or not probe.hostname:
        raise JobSpecError(f"must be an absolute http(s) URL (got {url!r})", path=path, key=key)
    try:
        # The same rules as for a URL the API names, but user info is the job's own to give.
        check_api_url(probe_text.replace(probe.netloc, probe.netloc.rpartition("@")[2], 1),
                      "the job's url")
    except UnsafeURL as exc:
        raise JobSpecError(str(exc).replace("; no request was sent", ""), path=path,
                           key=key) from None


def _check_scalar_table(table: dict, path: str, key: str, *, numbers: bool) -> None:
    allowed = (str, int, float) if numbers else (str,)
    what = "a string or a number" if numbers else "a string"
    for name, value in table.items():
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise JobSpecError(f"must be {what}, not {type(value).__name__}",
                               path=path, key=f"{key}.{name}")
        for text, part in ((name, "name"), (value, "value")):
            if isinstance(text, str) and len(text) > MAX_VALUE_CHARS:
                raise JobSpecError(f"the {part} is {len(text):,} characters long, over"
                                   f" {MAX_VALUE_CHARS:,}", path=path, key=f"{key}.{name[:64]}")


def _check_headers(headers: dict, path: str) -> None:
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise JobSpecError("is not a valid HTTP header name", path=path,
                               key=f"job.headers.{name[:64]}")
        text = TEMPLATE.sub("x", value)
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise JobSpecError("holds a character HTTP headers cannot carry (not Latin-1)",
                               path=path, key=f"job.headers.{name}") from None
        if any(c in text for c in "\r\n\x00"):
            raise JobSpecError("holds a line break or NUL", path=path, key=f"job.headers.{name}")


def _check_json_value(value: Any, path: str, key: str) -> None:
    """TOML has dates and times; JSON does not. Refuse them where JSON is sent."""
    if isinstance(value, (date, time)):
        raise JobSpecError("dates and times cannot be sent as JSON; quote them as strings",
                           path=path, key=key)
    if isinstance(value, float) and not math.isfinite(value):
        raise JobSpecError("inf and nan cannot be sent as JSON", path=path, key=key)
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        raise JobSpecError(f"is {len(value):,} characters long, over {MAX_VALUE_CHARS:,}",
                           path=path, key=key)
    if isinstance(value, dict):
        for name, item in value.items():
            _check_json_value(item, path, f"{key}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, path, f"{key}[{index}]")


def _check_pagination(p: dict[str, Any], output: dict[str, Any], path: str) -> None:
    style = p["style"]

    def need(key: str, why: str) -> None:
        raise JobSpecError(f"is required for style = {style!r} ({why})", path=path,
                           key=f"pagination.{key}")

    def forbid_both(a: str, b: str) -> None:
        if a in p and b in p:
            raise JobSpecError(f"give either pagination.{a} or pagination.{b}, not both",
                               path=path, key=f"pagination.{b}")

    if "total" in p and p["total"] > MAX_PAGES * p.get("limit", 100):
        raise JobSpecError(f"must be at most {MAX_PAGES:,} pages of limit records",
                           path=path, key="pagination.total")
    def one_end(sizes: tuple[str, ...], hint: str) -> None:
        """At most one way to size the job, and some way for it to end."""
        given = [k for k in sizes if k in p]
        if len(given) > 1:
            raise JobSpecError(f"give one of pagination.{given[0]} or pagination.{given[1]},"
                               " not both", path=path, key=f"pagination.{given[1]}")
        if not given and not any(p.get(k) for k in ("max_pages", "stop_on_empty",
                                                     "stop_on_status")):
            need(sizes[0], hint)

    if style == "page":
        one_end(("pages", "total_pages_path", "total_path", "total_header"),
                "or total_pages_path, total_path or total_header with page_size,"
                " max_pages, stop_on_empty or stop_on_status")
        for key in ("total_path", "total_header"):
            if key in p and "page_size" not in p:
                raise JobSpecError(f"pagination.{key} is a record count: give"
                                   " pagination.page_size (records per page) too", path=path,
                                   key="pagination.page_size")
    elif style == "offset":
        one_end(("total", "total_path", "total_header"),
                "or total_path, total_header, max_pages, stop_on_empty or stop_on_status")
    elif style == "cursor" and "cursor_path" not in p:
        need("cursor_path", "where each response names the next cursor")
    elif style == "next_url" and "next_url_path" not in p:
        need("next_url_path", "where each response names the next URL")
    if style != "page":
        for key in ("page_size", "total_pages_path"):
            if key in p:
                raise JobSpecError(f"only applies to style = 'page'"
                                   f"{' (offset jobs use limit)' if style == 'offset' else ''}",
                                   path=path, key=f"pagination.{key}")
    if style not in ("page", "offset"):
        for key in ("total", "total_path", "total_header"):
            if key in p:
                raise JobSpecError("only applies to style = 'page' or 'offset'", path=path,
                                   key=f"pagination.{key}")

    records_path = output.get("records_path", p.get("records_path"))
    if p.get("stop_on_empty") and records_path is None:
        raise JobSpecError("stop_on_empty needs records_path (in [pagination] or [output])",
                           path=path, key="pagination.stop_on_empty")
    # A JSON Lines body is already one record per line: it needs no path.
    if (output.get("mode") == "records" and records_path is None
            and output.get("body_format") != "jsonl"):
        raise JobSpecError("is required when output.mode = 'records' "
                           "(unless output.body_format = 'jsonl')", path=path,
                           key="output.records_path")
    for host in p.get("allow_hosts", []):
        if not isinstance(host, str) or not host or "/" in host:
            raise JobSpecError("must list host names", path=path, key="pagination.allow_hosts")


def parse_job(document: dict[str, Any], path: str = "<job>") -> JobSpec:
    """Validate a parsed TOML document and build the :class:`JobSpec`."""
    for section in document:
        if section not in SECTIONS:
            raise JobSpecError(f"unknown section (known: {', '.join(SECTIONS)})", path=path,
                               key=section)
    for section in REQUIRED_SECTIONS:
        if section not in document:
            raise JobSpecError(f"section [{section}] is required", path=path, key=section)
    tables = {name: _check_section(name, document.get(name, {}), path) for name in SECTIONS}
    job, pagination, output = tables["job"], tables["pagination"], tables["output"]

    _check_url(job["url"], path, "job.url")
    _check_scalar_table(job.get("params", {}), path, "job.params", numbers=True)
    _check_json_value(job.get("params", {}), path, "job.params")
    _check_scalar_table(job.get("headers", {}), path, "job.headers", numbers=False)
    _check_headers(job.get("headers", {}), path)
    _check_json_value(job.get("json"), path, "job.json")
    if "json" in job and job.get("method", "GET") != "POST":
        raise JobSpecError("is only sent with method = 'POST'", path=path, key="job.json")
    _check_pagination(pagination, output, path)
    http = tables["http"]
    if http.get("backoff_max", 60.0) < http.get("backoff_factor", 0.5):
        raise JobSpecError("must be at least http.backoff_factor", path=path, key="http.backoff_max")

    pagination["allow_hosts"] = tuple(pagination.get("allow_hosts", ()))
    pagination["stop_on_status"] = tuple(pagination.get("stop_on_status", ()))
    overlap = set(pagination["stop_on_status"]) & set(http.get("retry_statuses",
                                                             HttpSpec.retry_statuses))
    if overlap:
        raise JobSpecError(f"status {min(overlap)} is also in http.retry_statuses; a status either"
                           " ends the job or is retried", path=path,
                           key="pagination.stop_on_status")
    http_spec = HttpSpec(**{k: (tuple(v) if k == "retry_statuses" else v) for k, v in http.items()})
    return JobSpec(
        name=job["name"], url=job["url"], method=job.get("method", "GET"),
        params=job.get("params", {}), headers=job.get("headers", {}), json=job.get("json"),
        pagination=PaginationSpec(**pagination), http=http_spec,
        limits=LimitsSpec(**tables["limits"]), output=OutputSpec(**output),
    )


def load_job(path: str | Path, base_dir: str | Path | None = None) -> JobSpec:
    """Read, validate and return the job at ``path``.

    ``output.dir`` is made absolute against ``base_dir`` (default: the current
    directory, as a user running ``harvest run`` from a shell expects) but not
    resolved: the output-dir check must see a symlink to refuse it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_JOB_FILE_BYTES + 1)
    except FileNotFoundError:
        raise JobSpecError("no such job file", path=str(path)) from None
    except IsADirectoryError:
        raise JobSpecError("is a directory, not a job file", path=str(path)) from None
    except OSError as exc:
        raise JobSpecError(f"cannot read job file: {exc}", path=str(path)) from None
    return job_from_toml(data, source=str(path), base_dir=base_dir)


def job_from_toml(data: bytes | str, *, source: str = "<job>",
                  base_dir: str | Path | None = None) -> JobSpec:
    """A job from the text of a job file (as :func:`load_job` reads it)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobSpecError(f"job file is over {MAX_JOB_FILE_BYTES // 1024:,} KiB; a job file"
                           " holds settings, not data", path=source)
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise JobSpecError(f"cannot read job file: {exc}", path=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(f"not valid TOML: {exc}", path=source) from None
    return job_from_document(document, source=source, base_dir=base_dir)


def job_from_document(document: Any, *, source: str = "<job>",
                      base_dir: str | Path | None = None) -> JobSpec:
    """A job from a parsed job file: TOML's tables, or the same shape as JSON."""
    if not isinstance(document, dict):
        raise JobSpecError("a job is a table of sections ([job], [pagination], [output])",
                           path=source)
    spec = parse_job(document, source)
    if is_object_store(spec.output.dir):
        try:
            split_s3_url(spec.output.dir)
        except JobSpecError as exc:
            raise JobSpecError(str(exc).split(": ", 1)[-1], path=source,
                               key="output.dir") from None
        return spec
    out_dir = Path(os.path.join(base_dir or os.getcwd(), spec.output.dir))
    return replace(spec, output=replace(spec.output, dir=str(out_dir)))
