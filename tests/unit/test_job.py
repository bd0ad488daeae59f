"""harvester.core.job: TOML job files in, validated immutable JobSpec out.

Every rejection must name the dotted key both in the message and in
``JobSpecError.key``; templates stay verbatim; ``load_job`` makes the output
dir absolute. Pure: no sockets, only small temp files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from harvester.errors import JobSpecError
from harvester.core.job import load_job, parse_job
from harvester.core.spec import HttpSpec, JobSpec, OutputSpec, PaginationSpec

VALID_TOML = '''\
[job]
name = "employees"
url = "https://api.example.com/v1/items"
method = "GET"
params = { per_page = 100 }
headers = { Authorization = "Bearer ${API_TOKEN}" }

[pagination]
style = "page"
param = "page"
start = 1
pages = 5000

[http]
timeout_connect = 5
timeout_read = 30
page_deadline = 600
retries = 5
backoff_factor = 0.5
backoff_max = 60
retry_statuses = [429, 500, 502, 503, 504]

[limits]
rate_per_second = 20
max_in_flight = 32

[output]
dir = "data/employees"
mode = "pages"
compress_level = 6
'''


def minimal() -> dict[str, Any]:
    """The smallest valid document: a page-style job with a fixed page count."""
    return {
        "job": {"name": "employees", "url": "https://api.example.com/v1/items"},
        "pagination": {"style": "page", "pages": 3},
        "output": {"dir": "out"},
    }


def with_changes(**sections: dict[str, Any]) -> dict[str, Any]:
    """``minimal()`` with keys set per section; a value of ``...`` deletes the key."""
    doc = minimal()
    for section, changes in sections.items():
        table = doc.setdefault(section, {})
        for key, value in changes.items():
            if value is ...:
                table.pop(key, None)
            else:
                table[key] = value
    return doc


def rejected(doc: dict[str, Any], key: str, path: str = "jobs/x.toml") -> JobSpecError:
    """Parse ``doc`` expecting a JobSpecError naming ``key`` (attribute and message)."""
    with pytest.raises(JobSpecError) as info:
        parse_job(doc, path)
    err = info.value
    assert err.key == key, f"key {err.key!r} != {key!r}: {err}"
    assert key in str(err)
    assert path in str(err) and err.path == path
    return err


# ------------------------------------------------------------------ valid jobs


def test_full_example_parses_to_expected_spec(tmp_path):
    """The SPEC's example job loads with every value as written and defaults elsewhere."""
    job = tmp_path / "employees.toml"
    job.write_text(VALID_TOML)
    spec = load_job(job, base_dir=tmp_path)
    assert spec.name == "employees"
    assert spec.url == "https://api.example.com/v1/items"
    assert spec.method == "GET"
    assert spec.params == {"per_page": 100}
    assert spec.pagination.style == "page" and spec.pagination.pages == 5000
    assert spec.pagination.total_pages_path is None
    assert spec.http.retry_statuses == (429, 500, 502, 503, 504)
    assert isinstance(spec.http.retry_statuses, tuple)
    assert spec.http.backoff_factor == 0.5 and spec.http.retries == 5
    assert spec.limits.rate_per_second == 20 and spec.limits.max_in_flight == 32
    assert spec.output.mode == "pages" and spec.output.compress_level == 6
    assert spec.json is None


def test_minimal_job_gets_defaults():
    """Optional sections and keys take the documented defaults."""
    spec = parse_job(minimal())
    assert spec.method == "GET" and spec.params == {} and spec.headers == {}
    assert spec.http == HttpSpec()
    assert spec.limits.rate_per_second is None and spec.limits.max_in_flight is None
    assert spec.output == OutputSpec(dir="out")
    assert spec.pagination == PaginationSpec(style="page", pages=3)


@pytest.mark.parametrize("pagination", [
    {"style": "page", "total_pages_path": "meta.total_pages"},
    {"style": "page", "max_pages": 10},
    {"style": "page", "stop_on_empty": True, "records_path": "data"},
    {"style": "offset", "total": 1000, "limit": 50},
    {"style": "offset", "total_path": "count"},
    {"style": "offset", "total": 0},
    {"style": "cursor", "cursor_path": "meta.next_cursor"},
    {"style": "next_url", "next_url_path": "links.next"},
    {"style": "link"},
    {"style": "link", "allow_hosts": ["cdn.example.com"]},
])
def test_valid_pagination_combinations(pagination):
    """Each documented pagination style with its required keys is accepted."""
    spec = parse_job(with_changes(pagination={"pages": ..., **pagination}))
    assert spec.pagination.style == pagination["style"]


def test_stop_on_empty_records_path_may_come_from_output():
    """stop_on_empty is satisfied by output.records_path, and records_path reads either."""
    spec = parse_job(with_changes(pagination={"pages": ..., "stop_on_empty": True},
                                  output={"mode": "records", "records_path": "items"}))
    assert spec.records_path == "items"


def test_records_mode_with_pagination_records_path():
    """mode = records accepts records_path from [pagination]."""
    spec = parse_job(with_changes(pagination={"records_path": "data"}, output={"mode": "records"}))
    assert spec.records_path == "data"


def test_post_with_json_body():
    """method = POST may carry a json body (table or array)."""
    spec = parse_job(with_changes(job={"method": "POST", "json": {"q": "x", "n": [1, 2]}}))
    assert spec.method == "POST" and spec.json == {"q": "x", "n": [1, 2]}


@pytest.mark.parametrize("name", ["a", "0", "a" * 64, "my-job_2", "9lives"])
def test_good_job_names(name):
    """Names matching [a-z0-9][a-z0-9_-]{0,63} (up to 64 chars) are accepted."""
    assert parse_job(with_changes(job={"name": name})).name == name


def test_templates_are_kept_verbatim():
    """${VAR} in url, params, headers and json stay as written (resolved only on workers)."""
    doc = with_changes(job={
        "url": "https://${API_HOST}/v1/items?key=${KEY}",
        "method": "POST",
        "params": {"token": "${TOKEN}"},
        "headers": {"Authorization": "Bearer ${API_TOKEN}"},
        "json": {"auth": {"secret": "${SECRET}"}},
    })
    spec = parse_job(doc)
    assert spec.url == "https://${API_HOST}/v1/items?key=${KEY}"
    assert spec.params == {"token": "${TOKEN}"}
    assert spec.headers == {"Authorization": "Bearer ${API_TOKEN}"}
    assert spec.json == {"auth": {"secret": "${SECRET}"}}
    assert "${API_TOKEN}" in json.dumps(spec.to_dict())


def test_parse_job_does_not_mutate_the_document():
    """Validation works on copies: the caller's parsed TOML is left untouched."""
    doc = with_changes(pagination={"allow_hosts": ["a.example"]})
    before = copy.deepcopy(doc)
    parse_job(doc)
    assert doc == before


# ------------------------------------------------------------------ rejections

REJECTIONS = [
    # missing required sections and keys
    pytest.param(lambda d: d.pop("job"), "job", id="missing-section-job"),
    pytest.param(lambda d: d.pop("pagination"), "pagination", id="missing-section-pagination"),
    pytest.param(lambda d: d.pop("output"), "output", id="missing-section-output"),
    pytest.param(lambda d: d["job"].pop("name"), "job.name", id="missing-name"),
    pytest.param(lambda d: d["job"].pop("url"), "job.url", id="missing-url"),
    pytest.param(lambda d: d["pagination"].pop("style"), "pagination.style", id="missing-style"),
    pytest.param(lambda d: d["output"].pop("dir"), "output.dir", id="missing-dir"),
    # unknown keys and sections
    pytest.param(lambda d: d["job"].update(nmae="x"), "job.nmae", id="unknown-job-key"),
    pytest.param(lambda d: d["pagination"].update(pagesize=5), "pagination.pagesize",
                 id="unknown-pagination-key"),
    pytest.param(lambda d: d.update(http={"timeout": 5}), "http.timeout", id="unknown-http-key"),
    pytest.param(lambda d: d.update(output={"dir": "o", "format": "csv"}), "output.format",
                 id="unknown-output-key"),
    pytest.param(lambda d: d.update(auth={"user": "x"}), "auth", id="unknown-section"),
    pytest.param(lambda d: d.update(job="employees"), "job", id="section-not-a-table"),
    # wrong types
    pytest.param(lambda d: d["job"].update(name=5), "job.name", id="name-int"),
    pytest.param(lambda d: d["job"].update(url=["https://x"]), "job.url", id="url-list"),
    pytest.param(lambda d: d["job"].update(params="per_page=5"), "job.params", id="params-str"),
    pytest.param(lambda d: d["job"].update(params={"p": {"a": 1}}), "job.params.p",
                 id="param-value-table"),
    pytest.param(lambda d: d["job"].update(params={"p": True}), "job.params.p",
                 id="param-value-bool"),
    pytest.param(lambda d: d["job"].update(headers={"H": [1]}), "job.headers.H",
                 id="header-value-list"),
    pytest.param(lambda d: d["job"].update(method="POST", json="x"), "job.json", id="json-str"),
    pytest.param(lambda d: d["pagination"].update(pages="5"), "pagination.pages", id="pages-str"),
    pytest.param(lambda d: d["pagination"].update(pages=True), "pagination.pages",
                 id="pages-true"),
    pytest.param(lambda d: d["pagination"].update(pages=5.0), "pagination.pages",
                 id="pages-float"),
    pytest.param(lambda d: d["pagination"].update(start=False), "pagination.start",
                 id="start-false"),
    pytest.param(lambda d: d["pagination"].update(stop_on_empty="yes"),
                 "pagination.stop_on_empty", id="stop-on-empty-str"),
    pytest.param(lambda d: d["pagination"].update(allow_hosts="a.example"),
                 "pagination.allow_hosts", id="allow-hosts-str"),
    pytest.param(lambda d: d.update(http={"timeout_read": True}), "http.timeout_read",
                 id="timeout-true"),
    pytest.param(lambda d: d.update(http={"timeout_connect": "5"}), "http.timeout_connect",
                 id="timeout-str"),
    pytest.param(lambda d: d.update(http={"retries": 2.0}), "http.retries", id="retries-float"),
    pytest.param(lambda d: d.update(http={"retries": True}), "http.retries", id="retries-true"),
    pytest.param(lambda d: d.update(http={"retry_statuses": 429}), "http.retry_statuses",
                 id="retry-statuses-int"),
    pytest.param(lambda d: d.update(limits={"rate_per_second": True}), "limits.rate_per_second",
                 id="rate-true"),
    pytest.param(lambda d: d.update(limits={"max_in_flight": 2.5}), "limits.max_in_flight",
                 id="in-flight-float"),
    pytest.param(lambda d: d["output"].update(compress_level="6"), "output.compress_level",
                 id="level-str"),
    # impossible values
    pytest.param(lambda d: d["job"].update(method="PUT"), "job.method", id="method-put"),
    pytest.param(lambda d: d["job"].update(method="get"), "job.method", id="method-lower"),
    pytest.param(lambda d: d["pagination"].update(style="pages"), "pagination.style",
                 id="style-unknown"),
    pytest.param(lambda d: d["pagination"].update(pages=0), "pagination.pages", id="pages-0"),
    pytest.param(lambda d: d["pagination"].update(start=-1), "pagination.start", id="start-neg"),
    pytest.param(lambda d: d["pagination"].update(max_pages=0), "pagination.max_pages",
                 id="max-pages-0"),
    pytest.param(lambda d: d.update(pagination={"style": "page", "total_pages_path": "meta..total"}),
                 "pagination.total_pages_path", id="path-empty-part"),
    pytest.param(lambda d: d["pagination"].update(allow_hosts=["a.example/x"]),
                 "pagination.allow_hosts", id="allow-hosts-path"),
    pytest.param(lambda d: d["pagination"].update(allow_hosts=[""]),
                 "pagination.allow_hosts", id="allow-hosts-empty"),
    pytest.param(lambda d: d.update(http={"timeout_connect": 0}), "http.timeout_connect",
                 id="timeout-0"),
    pytest.param(lambda d: d.update(http={"page_deadline": -1}), "http.page_deadline",
                 id="deadline-neg"),
    pytest.param(lambda d: d.update(http={"retries": -1}), "http.retries", id="retries-neg"),
    pytest.param(lambda d: d.update(http={"retries": 101}), "http.retries", id="retries-101"),
    pytest.param(lambda d: d.update(http={"backoff_factor": -0.1}), "http.backoff_factor",
                 id="backoff-neg"),
    pytest.param(lambda d: d.update(http={"backoff_factor": 2, "backoff_max": 1}),
                 "http.backoff_max", id="backoff-max-below-factor"),
    pytest.param(lambda d: d.update(http={"retry_statuses": ["429"]}), "http.retry_statuses",
                 id="retry-statuses-str"),
    pytest.param(lambda d: d.update(http={"retry_statuses": [429, 99]}), "http.retry_statuses",
                 id="retry-statuses-99"),
    pytest.param(lambda d: d.update(http={"retry_statuses": [600]}), "http.retry_statuses",
                 id="retry-statuses-600"),
    pytest.param(lambda d: d.update(http={"retry_statuses": [True]}), "http.retry_statuses",
                 id="retry-statuses-bool"),
    pytest.param(lambda d: d.update(limits={"rate_per_second": 0}), "limits.rate_per_second",
                 id="rate-0"),
    pytest.param(lambda d: d.update(limits={"rate_per_second": float("nan")}),
                 "limits.rate_per_second", id="rate-nan"),
    pytest.param(lambda d: d.update(limits={"max_in_flight": 0}), "limits.max_in_flight",
                 id="in-flight-0"),
    pytest.param(lambda d: d["output"].update(dir="  "), "output.dir", id="dir-blank"),
    pytest.param(lambda d: d["output"].update(mode="lines"), "output.mode", id="mode-unknown"),
    pytest.param(lambda d: d["output"].update(compress_level=0), "output.compress_level",
                 id="level-0"),
    pytest.param(lambda d: d["output"].update(compress_level=10), "output.compress_level",
                 id="level-10"),
    # bad URLs
    pytest.param(lambda d: d["job"].update(url="api.example.com/v1"), "job.url", id="url-no-scheme"),
    pytest.param(lambda d: d["job"].update(url="ftp://api.example.com/x"), "job.url",
                 id="url-ftp"),
    pytest.param(lambda d: d["job"].update(url="https:///path-only"), "job.url", id="url-no-host"),
    pytest.param(lambda d: d["job"].update(url="/v1/items"), "job.url", id="url-relative"),
    pytest.param(lambda d: d["job"].update(url=""), "job.url", id="url-empty"),
    # bad names
    pytest.param(lambda d: d["job"].update(name="a/b"), "job.name", id="name-slash"),
    pytest.param(lambda d: d["job"].update(name=".."), "job.name", id="name-dotdot"),
    pytest.param(lambda d: d["job"].update(name="Employees"), "job.name", id="name-upper"),
    pytest.param(lambda d: d["job"].update(name="a" * 65), "job.name", id="name-65"),
    pytest.param(lambda d: d["job"].update(name=""), "job.name", id="name-empty"),
    pytest.param(lambda d: d["job"].update(name="-x"), "job.name", id="name-leading-dash"),
    pytest.param(lambda d: d["job"].update(name="a b"), "job.name", id="name-space"),
    pytest.param(lambda d: d["job"].update(name="a\n"), "job.name", id="name-newline"),
    # bad pagination combinations
    pytest.param(lambda d: d["pagination"].pop("pages"), "pagination.pages",
                 id="page-without-pages"),
    pytest.param(lambda d: d["pagination"].update(total_pages_path="meta.total_pages"),
                 "pagination.total_pages_path", id="page-with-pages-and-path"),
    pytest.param(lambda d: d.update(pagination={"style": "offset"}), "pagination.total",
                 id="offset-without-total"),
    pytest.param(lambda d: d.update(pagination={"style": "offset", "total": 5,
                                                "total_path": "count"}),
                 "pagination.total_path", id="offset-with-total-and-path"),
    pytest.param(lambda d: d.update(pagination={"style": "offset", "total": 5, "limit": 0}),
                 "pagination.limit", id="offset-limit-0"),
    pytest.param(lambda d: d.update(pagination={"style": "cursor"}), "pagination.cursor_path",
                 id="cursor-without-path"),
    pytest.param(lambda d: d.update(pagination={"style": "next_url"}),
                 "pagination.next_url_path", id="next-url-without-path"),
    pytest.param(lambda d: d.update(pagination={"style": "page", "stop_on_empty": True}),
                 "pagination.stop_on_empty", id="stop-on-empty-without-records-path"),
    pytest.param(lambda d: d["output"].update(mode="records"), "output.records_path",
                 id="records-mode-without-records-path"),
    # json only with POST
    pytest.param(lambda d: d["job"].update(json={"q": 1}), "job.json", id="json-with-default-get"),
    pytest.param(lambda d: d["job"].update(method="GET", json=[1]), "job.json",
                 id="json-with-get"),
]


@pytest.mark.parametrize("mutate, key", REJECTIONS)
def test_rejections_name_the_key(mutate, key):
    """Each invalid document raises JobSpecError whose .key and message name the key."""
    doc = minimal()
    mutate(doc)
    rejected(doc, key)


def test_type_error_message_says_what_was_expected():
    """A wrong type says which type is wanted and which was given (true is not a number)."""
    err = rejected(with_changes(http={"timeout_read": True}), "http.timeout_read")
    assert "must be a number, not bool" in str(err)


def test_unknown_key_message_lists_known_keys():
    """An unknown key's message lists the section's known keys to help fix a typo."""
    err = rejected(with_changes(job={"nmae": "x"}), "job.nmae")
    assert "unknown key" in str(err) and "name" in str(err) and "url" in str(err)


# Values TOML accepts but a request could never carry: refused up front.
def test_numeric_header_value_is_rejected():
    """A header value that is a number is rejected up front (requests only sends strings)."""
    rejected(with_changes(job={"headers": {"X-Page-Size": 5}}), "job.headers.X-Page-Size")


@pytest.mark.parametrize("key", ["timeout_connect", "timeout_read"])
def test_infinite_timeout_is_rejected(key):
    """TOML's `inf` as a socket timeout is an impossible value, rejected at validation."""
    rejected(with_changes(http={key: float("inf")}), f"http.{key}")


def test_json_body_with_toml_date_is_rejected_or_serialisable(tmp_path):
    """A TOML date inside the json body is either rejected naming job.json or survives JSON."""
    job = tmp_path / "j.toml"
    job.write_text(VALID_TOML.replace('method = "GET"', 'method = "POST"\njson = { since = 1979-05-27 }'))
    try:
        spec = load_job(job, base_dir=tmp_path)
    except JobSpecError as exc:
        assert exc.key is not None and exc.key.startswith("job.json")
        return
    json.dumps(spec.to_dict())


# -------------------------------------------------------------------- load_job


def test_output_dir_made_absolute_against_base_dir(tmp_path):
    """A relative output.dir is resolved against base_dir, not kept relative."""
    job = tmp_path / "jobs" / "employees.toml"
    job.parent.mkdir()
    job.write_text(VALID_TOML)
    base = tmp_path / "work"
    base.mkdir()
    spec = load_job(job, base_dir=base)
    assert Path(spec.output.dir).is_absolute()
    assert Path(spec.output.dir) == (base / "data" / "employees").resolve()


def test_output_dir_defaults_to_cwd(tmp_path, monkeypatch):
    """Without base_dir, output.dir is resolved against the current directory."""
    job = tmp_path / "employees.toml"
    job.write_text(VALID_TOML)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert Path(load_job(job).output.dir) == (cwd / "data" / "employees").resolve()


def test_absolute_output_dir_is_kept(tmp_path):
    """An absolute output.dir ignores base_dir."""
    target = tmp_path / "abs-out"
    job = tmp_path / "j.toml"
    job.write_text(VALID_TOML.replace('dir = "data/employees"', f'dir = "{target}"'))
    assert Path(load_job(job, base_dir=tmp_path / "elsewhere").output.dir) == target.resolve()


def test_load_job_keeps_everything_but_the_dir(tmp_path):
    """load_job equals parse_job except for the absolute output dir."""
    import tomllib

    job = tmp_path / "j.toml"
    job.write_text(VALID_TOML)
    loaded = load_job(job, base_dir=tmp_path)
    parsed = parse_job(tomllib.loads(VALID_TOML), str(job))
    assert loaded.output.dir != parsed.output.dir
    assert JobSpec.from_dict({**loaded.to_dict(), "output": parsed.to_dict()["output"]}) == parsed


def test_invalid_toml_is_a_job_spec_error(tmp_path):
    """Broken TOML raises JobSpecError naming the file and saying it is not valid TOML."""
    job = tmp_path / "broken.toml"
    job.write_text('[job]\nname = "x\n')
    with pytest.raises(JobSpecError) as info:
        load_job(job)
    assert info.value.path == str(job)
    assert str(job) in str(info.value) and "not valid TOML" in str(info.value)


def test_missing_file_is_a_job_spec_error(tmp_path):
    """A job file that does not exist raises JobSpecError naming it."""
    job = tmp_path / "nope.toml"
    with pytest.raises(JobSpecError) as info:
        load_job(job)
    assert info.value.path == str(job)
    assert "no such job file" in str(info.value)


def test_non_utf8_file_is_a_job_spec_error(tmp_path):
    """A job file that is not UTF-8 raises JobSpecError, not UnicodeDecodeError."""
    job = tmp_path / "latin.toml"
    job.write_bytes(b'[job]\nname = "caf\xe9"\n')
    with pytest.raises(JobSpecError) as info:
        load_job(job)
    assert info.value.path == str(job)


def test_load_job_error_names_file_and_key(tmp_path):
    """A semantic error found by load_job names the file path and the dotted key."""
    job = tmp_path / "bad.toml"
    job.write_text(VALID_TOML.replace("compress_level = 6", "compress_level = 12"))
    with pytest.raises(JobSpecError) as info:
        load_job(job)
    assert info.value.key == "output.compress_level"
    assert str(job) in str(info.value) and "output.compress_level" in str(info.value)


# ------------------------------------------------------------------ round trip

ROUND_TRIP_DOCS = [
    pytest.param(minimal(), id="minimal"),
    pytest.param(with_changes(
        job={"method": "POST", "json": {"filter": {"q": "${Q}"}, "ids": [1, 2]},
             "params": {"a": 1, "b": "x"}, "headers": {"X-Key": "${KEY}"}},
        pagination={"pages": ..., "style": "offset", "total_path": "meta.count", "limit": 25,
                    "max_pages": 7, "allow_hosts": ["a.example", "b.example"]},
        http={"retry_statuses": [429, 503], "timeout_read": 2.5, "retries": 0},
        limits={"rate_per_second": 1.5, "max_in_flight": 4},
        output={"mode": "records", "records_path": "data.items", "compress_level": 1}),
        id="everything"),
    pytest.param(with_changes(pagination={"pages": ..., "style": "cursor",
                                          "cursor_path": "next", "stop_on_empty": True,
                                          "records_path": "data"}), id="cursor"),
]


@pytest.mark.parametrize("doc", ROUND_TRIP_DOCS)
def test_round_trip_through_dict(doc):
    """JobSpec.from_dict(spec.to_dict()) rebuilds an equal spec."""
    spec = parse_job(copy.deepcopy(doc))
    assert JobSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("doc", ROUND_TRIP_DOCS)
def test_round_trip_through_json(doc):
    """The spec survives json.dumps/json.loads (how it travels through Redis), tuples included."""
    spec = parse_job(copy.deepcopy(doc))
    again = JobSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert isinstance(again.http.retry_statuses, tuple)
    assert isinstance(again.pagination.allow_hosts, tuple)


def test_spec_is_immutable():
    """JobSpec is frozen: a parsed job cannot be altered in place."""
    spec = parse_job(minimal())
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
