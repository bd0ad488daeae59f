"""Every pagination style and records mode, harvested exactly, on real Redis,
real worker processes and the demo API over HTTP."""

from __future__ import annotations

import gzip
import json
import time
from decimal import Decimal

import pytest

from harvester.demo.data import record
from support.demo import start_demo_api
from support.jobs import job_toml
from support.output import failed_lines, read_pages
from support.services import kill_tree, private_cluster, tree_rss

PAGES, PER_PAGE = 400, 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Redis and two worker processes for the module's many small jobs."""
    with private_cluster(tmp_path_factory.mktemp("styles")) as pair:
        yield pair


def _job(path, *, url, pagination, params=None, extra="", out="out"):
    return job_toml(path, url=url, params=params or {}, pagination=pagination, extra=extra,
                    out=out, name="styles",
                    http="timeout_read = 20\npage_deadline = 120\nretries = 2\n"
                         "backoff_factor = 0.05\nbackoff_max = 0.2")


def _record_ids_from_pages(out) -> list[int]:
    ids = []
    _, lines = read_pages(out)
    for line in lines.values():
        body = line["body"]
        data = body if isinstance(body, list) else body["data"]
        ids.extend(item["id"] for item in data)
    return sorted(ids)


STYLES = {
    "offset": ("offset", {"total": PAGES * PER_PAGE},
               f'style = "offset"\nlimit = {PER_PAGE}\ntotal_path = "count"'),
    "cursor": ("cursor", {"per_page": PER_PAGE, "pages": PAGES},
               'style = "cursor"\ncursor_param = "cursor"\ncursor_path = "meta.next_cursor"'),
    "next_url": ("next", {"per_page": PER_PAGE, "pages": PAGES},
                 'style = "next_url"\nnext_url_path = "next"'),
    "next_url_relative": ("next", {"per_page": PER_PAGE, "pages": PAGES, "relative": 1},
                          'style = "next_url"\nnext_url_path = "next"'),
    "link": ("link", {"per_page": PER_PAGE, "pages": PAGES}, 'style = "link"'),
    "link_json_lines": ("jsonl", {"per_page": PER_PAGE, "pages": PAGES}, 'style = "link"'),
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_each_style_harvests_every_record_once(style, demo_api, cluster, harvest, tmp_path):
    """Offset, cursor, next_url (absolute and relative), Link header and a JSON Lines API each
    harvest a 400-page API exactly: every page once, every record once, _SUCCESS, verify ok."""
    redis_server, _ = cluster
    path, params, pagination = STYLES[style]
    job = _job(tmp_path / "job.toml", url=f"{demo_api.url}/{path}", params=params,
               pagination=pagination)
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    counts, _ = read_pages(out)
    assert sorted(counts) == list(range(1, PAGES + 1)) and set(counts.values()) == {1}
    assert _record_ids_from_pages(out) == list(range(1, PAGES * PER_PAGE + 1))
    assert (out / "_SUCCESS").exists()
    assert harvest("verify", str(out)).returncode == 0


@pytest.mark.parametrize("path", ["cursor", "jsonl"])
def test_records_mode_equals_the_source_record_for_record(path, demo_api, cluster, harvest,
                                                          tmp_path):
    """Records mode writes one line per record, equal to the source record (numbers exact,
    unicode kept), for a JSON body (cursor) and a JSON Lines body (link)."""
    redis_server, _ = cluster
    pagination = ('style = "cursor"\ncursor_path = "meta.next_cursor"' if path == "cursor"
                  else 'style = "link"')
    job = _job(tmp_path / "job.toml", url=f"{demo_api.url}/{path}",
               params={"per_page": 7, "pages": 60}, pagination=pagination,
               extra='mode = "records"\nrecords_path = "data"')
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    lines = []
    for shard in sorted(out.glob("part-*.jsonl.gz")):
        lines.extend(gzip.decompress(shard.read_bytes()).splitlines())
    assert len(lines) == 7 * 60
    for n, line in enumerate(lines, 1):
        assert json.loads(line, parse_float=Decimal) == record(n)
        assert "✓" in line.decode(), "unicode is kept, not escaped"
    meta = json.loads((out / "_manifest.json").read_text())
    assert meta["lines"] == 7 * 60 and meta["pages"]["ok"] == 60
    assert harvest("verify", str(out)).returncode == 0


def test_cursor_after_200_mb_of_records_in_constant_memory(demo_api, cluster, harvest,
                                                           tmp_path):
    """A cursor placed after 200 MB of records in one body is found (the chain goes on to
    page 2) with no process of the run above 100 MB RSS."""
    redis_server, workers = cluster
    job = _job(tmp_path / "job.toml", url=f"{demo_api.url}/big",
               params={"bytes": 200_000_000, "next_cursor": "after-the-records"},
               pagination='style = "cursor"\ncursor_path = "meta.next_cursor"')
    process = harvest.popen("run", str(job), redis_url=redis_server.url)
    peak = 0
    while process.poll() is None:
        for pid in [process.pid, demo_api.process.pid, *(p.pid for p in workers.processes)]:
            peak = max(peak, max(tree_rss(pid).values(), default=0))
        time.sleep(0.05)
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    meta = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert meta["pages"]["ok"] == 2, "the cursor at the end of page 1 led to page 2"
    assert meta["raw_bytes"] > 200_000_000
    assert peak < 100 * 2**20, f"peak RSS {peak / 2**20:.0f} MB"


def test_chain_page_seven_fails_then_retry_resumes(demo_api, cluster, harvest, tmp_path):
    """A cursor chain whose page 7 fails for good ends with exit 1 (pages 1-6 committed, page 7
    in _failed.jsonl, its cursor kept); after the API recovers, `harvest retry` resumes the
    chain from page 7 and the output is exact."""
    redis_server, _ = cluster
    demo_api.set_faults([{"kind": "status", "status": 500, "paths": ["/cursor"], "pages": [7]}])
    try:
        job = _job(tmp_path / "job.toml", url=f"{demo_api.url}/cursor",
                   params={"per_page": PER_PAGE, "pages": 30},
                   pagination='style = "cursor"\ncursor_path = "meta.next_cursor"')
        result = harvest("run", str(job), redis_url=redis_server.url)
        assert result.returncode == 1, result.stderr
        job_id = result.stdout.split()[1]
        out = tmp_path / "out"
        failed = failed_lines(out)
        assert [f["page"] for f in failed] == [7] and "cursor=c7" in failed[0]["url"]
        assert sorted(read_pages(out)[0]) == list(range(1, 7))
    finally:
        demo_api.clear_faults()
    retried = harvest("retry", job_id, redis_url=redis_server.url)
    assert retried.returncode == 0, retried.stderr
    counts, _ = read_pages(out)
    assert sorted(counts) == list(range(1, 31)) and set(counts.values()) == {1}
    assert _record_ids_from_pages(out) == list(range(1, 30 * PER_PAGE + 1))
    assert harvest("verify", str(out)).returncode == 0


def test_worker_killed_mid_chain_does_not_break_it(cluster, harvest, tmp_path):
    """Every worker SIGKILLed while a slow chain runs, then one started again: the expired
    lease re-sends the running page and the chain completes exactly."""
    redis_server, workers = cluster
    with start_demo_api(latency_ms=250) as slow:
        job = _job(tmp_path / "job.toml", url=f"{slow.url}/cursor",
                   params={"per_page": PER_PAGE, "pages": 40},
                   pagination='style = "cursor"\ncursor_path = "meta.next_cursor"')
        process = harvest.popen("run", str(job), redis_url=redis_server.url)
        time.sleep(3)
        for worker in list(workers.processes):
            kill_tree(worker.pid)
            worker.wait()
        workers.processes.clear()
        workers.count = 2
        workers.start()
        assert process.wait(timeout=180) == 0, process.stderr.read()
    counts, _ = read_pages(tmp_path / "out")
    assert sorted(counts) == list(range(1, 41)) and set(counts.values()) == {1}


def test_next_link_to_another_origin_fails_that_page(cluster, harvest, tmp_path):
    """A next URL on another origin (127.0.0.2) fails the page it leads to with an error
    naming both origins; that origin receives no request and no credential."""
    redis_server, _ = cluster
    with start_demo_api() as home, start_demo_api(host="127.0.0.2") as elsewhere:
        other = elsewhere.url.split("//")[1]
        job = _job(tmp_path / "job.toml", url=f"{home.url}/next",
                   params={"per_page": PER_PAGE, "pages": 10, "link_host": other},
                   pagination='style = "next_url"\nnext_url_path = "next"')
        result = harvest("run", str(job), redis_url=redis_server.url)
        assert result.returncode == 1, result.stderr
        failed = failed_lines(tmp_path / "out")
        assert [f["page"] for f in failed] == [2]
        assert "127.0.0.2" in failed[0]["message"] and "127.0.0.1" in failed[0]["message"]
        assert "no request was sent" in failed[0]["message"]
        assert elsewhere.stats()["requests"] == 0
        assert sorted(read_pages(tmp_path / "out")[0]) == [1]


def test_repeated_cursor_fails_the_page_instead_of_looping(api, cluster, harvest, tmp_path):
    """An API whose page 5 hands back page 2's cursor: page 5 fails with a message saying the
    API is looping, the job ends (exit 1) instead of walking the loop, pages 1-4 are kept."""
    redis_server, _ = cluster
    job = _job(tmp_path / "job.toml", url=f"{api.url}/cursor",
               params={"per_page": PER_PAGE, "pages": 30, "loop_at": 5},
               pagination='style = "cursor"\ncursor_path = "meta.next_cursor"')
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 1, result.stderr
    failed = failed_lines(tmp_path / "out")
    assert [f["page"] for f in failed] == [5]
    assert "already followed" in failed[0]["message"] and "'c2'" in failed[0]["message"]
    assert sorted(read_pages(tmp_path / "out")[0]) == [1, 2, 3, 4]
    asked = api.stats()["by_page"]
    assert asked.get("/cursor:6") is None, "the loop was not followed"
    assert asked["/cursor:2"] == 1, "page 2's cursor was not asked for again, not even ahead"


def test_a_chain_asks_for_each_page_once_even_when_sent_ahead(api, cluster, harvest, tmp_path):
    """A cursor chain sends each successor's request ahead while its page commits: the API
    still sees each page asked for exactly once, and a successor whose request sent ahead
    got a 503 or a body cut short is retried like any page (asked for twice, in the
    output once, its requests counted)."""
    redis_server, _ = cluster
    api.set_faults([
        {"kind": "status", "status": 503, "paths": ["/cursor"], "pages": [9], "times": 1},
        {"kind": "reset", "paths": ["/cursor"], "pages": [20], "times": 1, "after_bytes": 50},
    ])
    job = _job(tmp_path / "job.toml", url=f"{api.url}/cursor",
               params={"per_page": PER_PAGE, "pages": 60, "pad": 200},
               pagination='style = "cursor"\ncursor_path = "meta.next_cursor"')
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 0, result.stderr
    counts, _ = read_pages(tmp_path / "out")
    assert sorted(counts) == list(range(1, 61)) and set(counts.values()) == {1}
    asked = api.stats()["by_page"]
    assert {page: asked[f"/cursor:{page}"] for page in range(1, 61)} == {
        page: 2 if page in (9, 20) else 1 for page in range(1, 61)}
    assert len([k for k in asked if k.startswith("/cursor:")]) == 60
    status = harvest("status", result.stdout.split()[1], "--json", redis_url=redis_server.url)
    assert json.loads(status.stdout)["requests"] == 62, status.stdout


def test_redirects_are_followed_only_within_the_origin(cluster, harvest, tmp_path):
    """A redirect within the job's origin is followed; one to another origin (127.0.0.2)
    fails the page naming both origins, and that origin receives no request, so neither
    the job's headers nor its body can leak there."""
    redis_server, workers = cluster
    workers.env["API_TOKEN"] = "tok-redirect"
    with start_demo_api() as home, start_demo_api(host="127.0.0.2") as elsewhere:
        job = _job(tmp_path / "job.toml", url=f"{home.url}/redirect",
                   params={"to": "/items?per_page=3&pages=2"},
                   pagination='style = "page"\npages = 2')
        result = harvest("run", str(job), redis_url=redis_server.url)
        assert result.returncode == 0, result.stderr
        assert sorted(read_pages(tmp_path / "out")[0]) == [1, 2]

        job = _job(tmp_path / "other.toml", url=f"{home.url}/redirect",
                   params={"to": f"{elsewhere.url}/items"},
                   pagination='style = "page"\npages = 2', out="other")
        result = harvest("run", str(job), redis_url=redis_server.url)
        assert result.returncode == 1
        failed = failed_lines(tmp_path / "other")
        assert [f["page"] for f in failed] == [1, 2]
        assert all("a redirect is on another origin" in f["message"] and "127.0.0.2" in f["message"]
                   for f in failed)
        assert elsewhere.stats()["requests"] == 0
