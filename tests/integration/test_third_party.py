"""Jobs against API servers nobody here wrote: Django REST Framework's three stock
paginators and fastapi-pagination, as real processes, with real Redis and real
workers. Each job must come out exact, or fail saying why: never exit 0 with
records skipped."""

from __future__ import annotations

import gzip
import json

import pytest

from support.jobs import job_toml
from support.output import manifest
from support.services import private_cluster
from support.thirdparty import drf, fastapi_pagination

USERS = RECORDS = 1000
HTTP = "timeout_read = 20\npage_deadline = 60\nretries = 2\nbackoff_factor = 0.05\nbackoff_max = 0.2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with private_cluster(tmp_path_factory.mktemp("thirdparty")) as pair:
        yield pair


@pytest.fixture(scope="module")
def drf_api(tmp_path_factory):
    with drf(tmp_path_factory.mktemp("drf"), USERS) as url:
        yield url


@pytest.fixture(scope="module")
def fastapi_api():
    with fastapi_pagination(RECORDS) as url:
        yield url


def run(harvest, cluster, tmp_path, *, url, pagination, params=None, extra="", name="job"):
    server, workers = cluster
    job = job_toml(tmp_path / f"{name}.toml", url=url, params=params or {},
                   pagination=pagination, http=HTTP, extra=extra, out=name, name="thirdparty")
    result = harvest("run", str(job), redis_url=server.url, timeout=300)
    return result, tmp_path / name


def record_ids(out) -> list[int]:
    ids = []
    for shard in sorted(out.glob("part-*.jsonl.gz")):
        with gzip.open(shard, "rt") as handle:
            ids.extend(json.loads(line)["id"] for line in handle)
    return ids


def test_drf_page_numbers_with_a_record_count(drf_api, cluster, harvest, tmp_path):
    """DRF PageNumberPagination: page numbers plus a total *record* count ("count")
    with page_size gives ceil(count / page_size) pages; records mode, every user once."""
    result, out = run(harvest, cluster, tmp_path, url=f"{drf_api}/page/",
                      pagination='style = "page"\npage_size = 10\ntotal_path = "count"',
                      extra='mode = "records"\nrecords_path = "results"')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, USERS + 1))
    assert manifest(out)["pages"]["total"] == USERS // 10
    assert harvest("verify", str(out)).returncode == 0


def test_drf_limit_offset_over_max_limit_fails_naming_the_cap(drf_api, cluster, harvest,
                                                               tmp_path):
    """DRF LimitOffset with max_limit = 50 and a job limit of 100: page 1 holds 50 records
    where 100 were asked. The job stops (exit 1) naming the cap and what to set; no
    _SUCCESS; verify says incomplete (exit 1). Before, half the users were skipped with
    exit 0 and _SUCCESS."""
    result, out = run(harvest, cluster, tmp_path, url=f"{drf_api}/limitoffset/",
                      pagination='style = "offset"\nlimit = 100\ntotal_path = "count"\n'
                                 'records_path = "results"')
    assert result.returncode == 1, result.stderr
    assert "caps its page size" in result.stderr and "pagination.limit = 50" in result.stderr
    assert not (out / "_SUCCESS").exists()
    assert "pagination.limit = 50" in manifest(out)["error"]
    verified = harvest("verify", str(out))
    assert verified.returncode == 1 and "incomplete" in verified.stderr


def test_drf_limit_offset_chain_detects_the_cap_from_the_next_page(drf_api, cluster, harvest,
                                                                   tmp_path):
    """Without a total (stop_on_empty), a short page is only known to be short when the
    page after it still has records: the job stops there, naming the cap."""
    result, out = run(harvest, cluster, tmp_path, url=f"{drf_api}/limitoffset/",
                      pagination='style = "offset"\nlimit = 100\nstop_on_empty = true\n'
                                 'records_path = "results"')
    assert result.returncode == 1, result.stderr
    assert "page 1 holds 50 records" in result.stderr and "pagination.limit = 50" in result.stderr
    assert not (out / "_SUCCESS").exists()


def test_drf_limit_offset_within_the_cap(drf_api, cluster, harvest, tmp_path):
    """The same API with limit = 50: every user once, exit 0."""
    result, out = run(harvest, cluster, tmp_path, url=f"{drf_api}/limitoffset/",
                      pagination='style = "offset"\nlimit = 50\ntotal_path = "count"',
                      extra='mode = "records"\nrecords_path = "results"')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, USERS + 1))


def test_drf_cursor_pagination_followed_by_next_url(drf_api, cluster, harvest, tmp_path):
    """DRF CursorPagination: opaque next URLs (a base64 cursor, percent-encoded) followed
    to the end; every user once."""
    result, out = run(harvest, cluster, tmp_path, url=f"{drf_api}/cursor/",
                      pagination='style = "next_url"\nnext_url_path = "next"',
                      extra='mode = "records"\nrecords_path = "results"')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, USERS + 1))


def test_max_pages_reached_while_the_api_had_more_is_said(drf_api, cluster, harvest, tmp_path):
    """max_pages = 3 on a 100-page API: exit 0 (the job asked for it), but the run's output
    and the manifest say the cap was hit while the API had more."""
    result, out = run(harvest, cluster, tmp_path, url=f"{drf_api}/cursor/",
                      pagination='style = "next_url"\nnext_url_path = "next"\nmax_pages = 3')
    assert result.returncode == 0, result.stderr
    assert "max_pages = 3 reached while the API had more" in result.stderr
    assert "max_pages = 3" in manifest(out)["capped"]
    fan_out, out2 = run(harvest, cluster, tmp_path, url=f"{drf_api}/page/", name="fan",
                        pagination='style = "page"\npage_size = 10\ntotal_path = "count"\n'
                                   'max_pages = 4')
    assert fan_out.returncode == 0, fan_out.stderr
    assert "announced 100 pages" in manifest(out2)["capped"]
    assert manifest(out2)["pages"]["ok"] == 4


def test_fastapi_pagination_page_and_limit_offset(fastapi_api, cluster, harvest, tmp_path):
    """fastapi-pagination's Page (total_pages_path = "pages") and LimitOffsetPage
    (total_path = "total"): every record once."""
    result, out = run(harvest, cluster, tmp_path, url=f"{fastapi_api}/page",
                      params={"size": 25}, name="page",
                      pagination='style = "page"\ntotal_pages_path = "pages"',
                      extra='mode = "records"\nrecords_path = "items"')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, RECORDS + 1))
    result, out = run(harvest, cluster, tmp_path, url=f"{fastapi_api}/limitoffset",
                      name="limitoffset",
                      pagination='style = "offset"\nlimit = 100\ntotal_path = "total"',
                      extra='mode = "records"\nrecords_path = "items"')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, RECORDS + 1))


def test_top_level_array_with_a_total_header(fastapi_api, cluster, harvest, tmp_path):
    """A body that is itself the array (records_path = ""), the record total in an
    X-Total-Count header of page 1: 50 pages of 20, every record once."""
    result, out = run(harvest, cluster, tmp_path, url=f"{fastapi_api}/array",
                      params={"per_page": 20},
                      pagination='style = "page"\npage_size = 20\n'
                                 'total_header = "X-Total-Count"',
                      extra='mode = "records"\nrecords_path = ""')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, RECORDS + 1))
    assert manifest(out)["pages"]["total"] == 50


def test_the_end_signalled_by_a_404(fastapi_api, cluster, harvest, tmp_path):
    """No total at all: pages until the API answers 404 (stop_on_status). The short last
    page is fine; the 404 page writes nothing; exit 0, _SUCCESS."""
    result, out = run(harvest, cluster, tmp_path, url=f"{fastapi_api}/array",
                      params={"per_page": 30},
                      pagination='style = "page"\npage_size = 30\nstop_on_status = [404]',
                      extra='mode = "records"\nrecords_path = ""')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, RECORDS + 1))
    assert manifest(out)["pages"] == {"total": 34, "ok": 34, "failed": 0, "pending": 0}
    assert (out / "_SUCCESS").exists()
    assert harvest("verify", str(out)).returncode == 0


def test_json_lines_served_as_application_json(fastapi_api, cluster, harvest, tmp_path):
    """An API that serves JSON Lines with Content-Type application/json:
    body_format = "jsonl" reads it line by line; pages mode makes each page the array of
    its lines."""
    result, out = run(harvest, cluster, tmp_path, url=f"{fastapi_api}/jsonl",
                      params={"per_page": 100}, name="records",
                      pagination='style = "page"\nstop_on_status = [404]',
                      extra='mode = "records"\nbody_format = "jsonl"')
    assert result.returncode == 0, result.stderr
    assert record_ids(out) == list(range(1, RECORDS + 1))
    result, out = run(harvest, cluster, tmp_path, url=f"{fastapi_api}/jsonl",
                      params={"per_page": 100}, name="pages",
                      pagination='style = "page"\npages = 2', extra='body_format = "jsonl"')
    assert result.returncode == 0, result.stderr
    with gzip.open(sorted(out.glob("part-*.jsonl.gz"))[0], "rt") as handle:
        lines = [json.loads(line) for line in handle]
    assert [[r["id"] for r in line["body"]] for line in lines] == \
        [list(range(1, 101)), list(range(101, 201))]
