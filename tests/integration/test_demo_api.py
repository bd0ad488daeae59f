"""The demo API over real sockets: every endpoint, every fault kind, auth, latency and stats.

Faulty responses are read with a tiny raw HTTP/1.1 client (:func:`raw_get`)
so the tests see exactly what went over the wire (declared length, bytes
received, chunked terminator) instead of whatever a client library makes of it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import requests

from harvester.demo.data import record
from tests.support.demo import DemoServer, start_demo_api
from tests.support.services import wait_for

GOOD_PAGE = "/items?page=2&per_page=10&pad=100"


@pytest.fixture(scope="module")
def server() -> DemoServer:
    with start_demo_api() as demo:
        yield demo


@pytest.fixture
def api(server: DemoServer) -> DemoServer:
    """The shared server with no fault rules and fresh stats."""
    server.clear_faults()
    server.reset_stats()
    yield server
    server.clear_faults()


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # did the HTTP framing say the message ended where it did?


def raw_get(base_url: str, target: str, timeout: float = 10) -> RawResponse:
    """GET ``target`` with ``Connection: close`` and read until the server closes."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        received = bytearray()
        while True:
            try:
                data = sock.recv(1 << 20)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    head, _, rest = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    if headers.get("transfer-encoding") == "chunked":
        body, complete = bytearray(), False
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                complete = True
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return RawResponse(int(status_line.split()[1]), headers, bytes(body), complete)
    complete = len(rest) == int(headers["content-length"])
    return RawResponse(int(status_line.split()[1]), headers, rest, complete)


def ids(page_body: dict) -> list[int]:
    return [item["id"] for item in page_body["data"]]


# ---------------------------------------------------------------- endpoints


def test_items_serves_the_requested_page_of_records_with_meta(api: DemoServer) -> None:
    """GET /items returns records (page-1)*per_page+1.. of the global sequence and meta
    page/per_page/total_pages."""
    response = requests.get(f"{api.url}/items?page=3&per_page=4&pages=5")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "data": [record(n) for n in range(9, 13)],
        "meta": {"page": 3, "per_page": 4, "total_pages": 5},
    }


def test_items_defaults_pad_and_byte_identical_repeats(api: DemoServer) -> None:
    """Defaults are per_page=10, pages=100; pad=K adds "pad": "x"*K; the same request gives the same
    bytes."""
    first = requests.get(f"{api.url}/items?pad=950")
    second = requests.get(f"{api.url}/items?pad=950")
    assert first.content == second.content
    assert 10_000 < len(first.content) < 12_000
    assert first.json()["data"] == [record(n, pad=950) for n in range(1, 11)]
    assert first.json()["meta"] == {"page": 1, "per_page": 10, "total_pages": 100}
    assert record(7) == {
        "id": 7, "name": "item-7", "value": 55433, "price": "8.75",
        "tags": ["t2", "t1"], "note": "unicode ✓ é 7",
    }  # fmt: skip


def test_items_past_the_last_page_is_empty_and_bad_params_are_400(api: DemoServer) -> None:
    """A page past total_pages has "data": []; page < 1 or a non-integer parameter answers 400."""
    assert requests.get(f"{api.url}/items?page=6&pages=5").json()["data"] == []
    assert requests.get(f"{api.url}/items?page=0").status_code == 400
    assert requests.get(f"{api.url}/items?per_page=ten").status_code == 400


def test_post_items_reads_paging_from_the_json_body(api: DemoServer) -> None:
    """POST /items takes page/per_page/pages from the JSON body and answers like GET /items."""
    response = requests.post(f"{api.url}/items", json={"page": 2, "per_page": 3, "pages": 4})
    assert response.json() == requests.get(f"{api.url}/items?page=2&per_page=3&pages=4").json()
    assert ids(response.json()) == [4, 5, 6]
    assert requests.post(f"{api.url}/items", data=b"not json").status_code == 400


def test_offset_serves_a_window_and_the_total_count(api: DemoServer) -> None:
    """GET /offset returns records offset+1..min(offset+limit, total) and "count": total."""
    assert requests.get(f"{api.url}/offset?offset=20&limit=5&total=100").json() == {
        "data": [record(n) for n in range(21, 26)],
        "count": 100,
    }
    assert ids(requests.get(f"{api.url}/offset?offset=95&limit=10&total=100").json()) == list(
        range(96, 101)
    )
    assert requests.get(f"{api.url}/offset?offset=100&limit=10&total=100").json()["data"] == []


def test_cursor_walk_covers_every_record_once_and_ends_with_null(api: DemoServer) -> None:
    """GET /cursor without a cursor is page 1; following meta.next_cursor visits each page once,
    then null."""
    seen, cursor = [], None
    for _ in range(10):
        params = {"per_page": 3, "pages": 4} | ({"cursor": cursor} if cursor else {})
        response = requests.get(f"{api.url}/cursor", params=params)
        assert response.content.startswith(b'{"meta":')  # meta first by default
        seen += ids(response.json())
        cursor = response.json()["meta"]["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(1, 13))


def test_cursor_last_puts_meta_after_data_and_bad_cursors_are_400(api: DemoServer) -> None:
    """cursor_last=1 moves "meta" after "data" (a cursor behind the body); an unknown cursor answers
    400."""
    body = requests.get(f"{api.url}/cursor?per_page=2&pages=3&cursor_last=1").content
    assert body.startswith(b'{"data":') and body.endswith(b'"meta":{"next_cursor":"c2"}}')
    assert requests.get(f"{api.url}/cursor?cursor=nonsense").status_code == 400


def test_next_url_is_absolute_and_carries_every_other_param(api: DemoServer) -> None:
    """GET /next links to the next page by absolute URL keeping all other query params; null on the
    last page."""
    url, seen = f"{api.url}/next?per_page=2&pages=3&pad=5&extra=keep", []
    while url:
        body = requests.get(url).json()
        assert body["data"] == [record(n, pad=5) for n in ids(body)]
        seen += ids(body)
        url = body["next"]
        if url:
            assert url.startswith(f"{api.url}/next?")
            assert {k: v for k, v in parse_qs(urlsplit(url).query).items() if k != "page"} == {
                "per_page": ["2"], "pages": ["3"], "pad": ["5"], "extra": ["keep"],
            }  # fmt: skip
    assert seen == [1, 2, 3, 4, 5, 6]


def test_next_url_relative_gives_path_and_query(api: DemoServer) -> None:
    """relative=1 makes "next" a path+query ("/next?...page=2...") that keeps relative=1."""
    next_url = requests.get(f"{api.url}/next?relative=1&per_page=1").json()["next"]
    assert next_url.startswith("/next?")
    assert parse_qs(urlsplit(next_url).query) == {
        "relative": ["1"],
        "per_page": ["1"],
        "page": ["2"],
    }


def test_link_header_carries_first_prev_next_last_and_walks_all_pages(api: DemoServer) -> None:
    """GET /link sends several rels in one Link header; following rel="next" reads every page; the
    last has none."""
    middle = requests.get(f"{api.url}/link?page=2&per_page=2&pages=3&pad=1")
    pages = {
        rel: parse_qs(urlsplit(link["url"]).query)["page"] for rel, link in middle.links.items()
    }
    assert pages == {"first": ["1"], "prev": ["1"], "next": ["3"], "last": ["3"]}
    assert middle.json() == {"data": [record(3, pad=1), record(4, pad=1)]}

    url, seen = f"{api.url}/link?per_page=2&pages=3", []
    while url:
        response = requests.get(url)
        seen += ids(response.json())
        url = response.links.get("next", {}).get("url")
    assert seen == [1, 2, 3, 4, 5, 6]


def test_jsonl_serves_one_record_per_line_with_a_link_header(api: DemoServer) -> None:
    """GET /jsonl is application/x-ndjson, one record per newline-ended line, with a Link
    rel="next"."""
    response = requests.get(f"{api.url}/jsonl?page=2&per_page=3&pages=2")
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.content.endswith(b"\n")
    assert [json.loads(line) for line in response.content.splitlines()] == [
        record(n) for n in (4, 5, 6)
    ]
    assert "next" not in response.links
    assert parse_qs(urlsplit(response.links["prev"]["url"]).query)["page"] == ["1"]
    first = requests.get(f"{api.url}/jsonl?per_page=3&pages=2")
    assert parse_qs(urlsplit(first.links["next"]["url"]).query)["page"] == ["2"]


def test_big_is_exactly_n_bytes_of_valid_deterministic_json(api: DemoServer) -> None:
    """GET /big?bytes=N sends exactly N bytes with that Content-Length: valid JSON, meta last unless
    cursor_last=0."""
    for size in (100, 1_048_577, 3_000_000):
        response = requests.get(f"{api.url}/big?bytes={size}")
        assert int(response.headers["content-length"]) == len(response.content) == size
        body = response.json()
        assert list(body) == ["data", "meta"] and body["meta"] == {
            "total_pages": 1,
            "next_cursor": None,
        }
        assert body["data"][:2] == ([record(1), record(2)] if size > 1000 else [])
        assert requests.get(f"{api.url}/big?bytes={size}").content == response.content
    meta_first = requests.get(f"{api.url}/big?bytes=2000000&cursor_last=0")
    assert meta_first.content.startswith(b'{"meta":') and len(meta_first.json()["data"]) > 10_000


def test_big_streams_without_holding_the_body(api: DemoServer) -> None:
    """Streaming a 512 MiB /big body does not grow the server's memory by anything like the body
    size."""
    server = psutil.Process(api.process.pid)
    rss_before = server.memory_info().rss
    received = 0
    with requests.get(f"{api.url}/big?bytes={512 << 20}", stream=True) as response:
        for chunk in response.iter_content(1 << 20):
            received += len(chunk)
    assert received == 512 << 20
    assert server.memory_info().rss - rss_before < 64 << 20


# ---------------------------------------------------------------- auth, latency, startup faults


def test_token_is_required_as_bearer_or_api_key_except_on_admin() -> None:
    """With a token, non-admin requests need "Authorization: Bearer T" or ?api_key=T (else 401);
    admin needs none."""
    with start_demo_api(token="s3cret") as demo:
        assert requests.get(f"{demo.url}/items").status_code == 401
        assert (
            requests.get(f"{demo.url}/items", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert (
            requests.get(
                f"{demo.url}/items", headers={"Authorization": "Bearer s3cret"}
            ).status_code
            == 200
        )
        assert requests.get(f"{demo.url}/items?api_key=s3cret").status_code == 200
        assert requests.get(f"{demo.url}/_admin/health").json() == {"ok": True}
        assert demo.stats()["requests"] == 4


def test_latency_delays_every_non_admin_response_and_startup_faults_apply() -> None:
    """--latency-ms delays each non-admin response by at least that; --faults rules are active from
    the start."""
    with start_demo_api(
        latency_ms=200, faults=[{"kind": "status", "status": 418, "paths": ["/offset"]}]
    ) as demo:
        started = time.monotonic()
        assert requests.get(f"{demo.url}/items").status_code == 200
        assert time.monotonic() - started >= 0.2
        assert requests.get(f"{demo.url}/offset").status_code == 418
        started = time.monotonic()
        requests.get(f"{demo.url}/_admin/health")
        assert time.monotonic() - started < 0.2


# ---------------------------------------------------------------- admin


def test_stats_count_requests_by_path_and_page_but_not_admin(api: DemoServer) -> None:
    """/_admin/stats counts non-admin requests (total, by_path, by_page "/path:page", monotonic
    times); reset clears."""
    before = time.monotonic()
    for target in (
        "/items?page=3",
        "/items?page=3",
        "/offset?offset=20&limit=10",
        "/cursor?cursor=c5",
        "/nowhere",
    ):
        requests.get(api.url + target)
    api.stats()
    stats = api.stats()
    assert stats["requests"] == 5
    assert stats["by_path"] == {"/items": 2, "/offset": 1, "/cursor": 1, "/nowhere": 1}
    assert stats["by_page"] == {"/items:3": 2, "/offset:3": 1, "/cursor:5": 1}
    assert (
        len(stats["times"]) == 5
        and before <= stats["times"][0] <= stats["times"][-1] <= time.monotonic()
    )
    api.reset_stats()
    assert api.stats() | {"times": []} == {
        "requests": 0, "by_path": {}, "by_page": {},
        "in_flight": 0, "max_in_flight": 0, "times": [], "faults": [],
    }  # fmt: skip


def test_stats_track_requests_in_flight_including_streamed_bodies(api: DemoServer) -> None:
    """in_flight counts requests until their body is fully sent; max_in_flight keeps the peak."""
    api.set_faults([{"kind": "stall", "seconds": 0.6, "paths": ["/items"]}])
    threads = [
        threading.Thread(target=requests.get, args=(f"{api.url}/items?page={n}",))
        for n in range(1, 5)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert api.stats()["in_flight"] == 4
    for thread in threads:
        thread.join()
    # A client can hold the last byte before the server's handler has returned.
    wait_for(lambda: api.stats()["in_flight"] == 0, timeout=5, what="in_flight back to 0")
    assert api.stats()["max_in_flight"] == 4


def test_invalid_fault_rules_are_rejected_and_the_old_ones_kept(api: DemoServer) -> None:
    """POST /_admin/faults answers 400 naming the problem for a bad rule list, leaving the current
    rules in force."""
    api.set_faults([{"kind": "status", "status": 503}])
    for bad in ([{"kind": "explode"}], [{"kind": "status", "colour": "red"}], {"kind": "status"}):
        response = requests.post(f"{api.url}/_admin/faults", json=bad)
        assert response.status_code == 400 and response.json()["error"]
    assert requests.get(f"{api.url}/items").status_code == 503
    api.clear_faults()
    assert requests.get(f"{api.url}/items").status_code == 200


# ---------------------------------------------------------------- fault selection


def test_status_fault_sends_the_status_and_retry_after(api: DemoServer) -> None:
    """kind=status answers that status with a JSON error and Retry-After verbatim (seconds or HTTP-
    date)."""
    http_date = "Wed, 21 Oct 2065 07:28:00 GMT"
    api.set_faults([
        {"kind": "status", "status": 503, "retry_after": "2", "pages": [1]},
        {"kind": "status", "status": 429, "retry_after": http_date, "pages": [2]},
        {"kind": "status", "status": 500, "pages": [3]},
    ])  # fmt: skip
    first, second, third = (requests.get(f"{api.url}/items?page={n}") for n in (1, 2, 3))
    assert (first.status_code, first.headers["retry-after"]) == (503, "2")
    assert (second.status_code, second.headers["retry-after"]) == (429, http_date)
    assert (
        third.status_code == 500
        and "retry-after" not in third.headers
        and third.json()["status"] == 500
    )


def test_times_limits_a_fault_to_the_first_n_requests_of_each_page(api: DemoServer) -> None:
    """times=n faults the first n requests of each matching page, then serves it normally; pages
    count separately."""
    api.set_faults([{"kind": "status", "status": 503, "times": 2}])
    assert [requests.get(f"{api.url}/items?page=3").status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]
    assert [requests.get(f"{api.url}/items?page=4").status_code for _ in range(3)] == [
        503,
        503,
        200,
    ]


def test_selection_by_paths_pages_and_every_uses_each_styles_page_number(api: DemoServer) -> None:
    """paths, pages and every select requests; /offset's page is offset//limit+1 and /cursor's the
    decoded page."""
    api.set_faults([
        {"kind": "status", "status": 502, "paths": ["/items"], "every": 2},
        {"kind": "status", "status": 503, "paths": ["/offset", "/cursor"], "pages": [3]},
    ])  # fmt: skip
    assert [requests.get(f"{api.url}/items?page={n}").status_code for n in (1, 2, 3, 4)] == [
        200,
        502,
        200,
        502,
    ]
    assert requests.get(f"{api.url}/link?page=2").status_code == 200
    assert requests.get(f"{api.url}/offset?offset=20&limit=10").status_code == 503
    assert requests.get(f"{api.url}/offset?offset=30&limit=10").status_code == 200
    assert requests.get(f"{api.url}/cursor?cursor=c3").status_code == 503
    assert requests.get(f"{api.url}/cursor?cursor=c4").status_code == 200


def test_first_matching_rule_wins_and_a_spent_rule_lets_the_next_one_apply(api: DemoServer) -> None:
    """Rules are tried in order: the first that matches applies; once its times are used up the next
    rule can."""
    api.set_faults(
        [{"kind": "status", "status": 429, "times": 1}, {"kind": "status", "status": 503}]
    )
    assert [requests.get(f"{api.url}/items").status_code for _ in range(3)] == [429, 503, 503]


# ---------------------------------------------------------------- fault kinds


def test_reset_drops_the_connection_mid_body_without_logging_a_traceback(api: DemoServer) -> None:
    """kind=reset declares the true Content-Length, sends part of the body, then closes the
    connection."""
    good = raw_get(api.url, GOOD_PAGE).body
    api.set_faults([{"kind": "reset"}])
    cut = raw_get(api.url, GOOD_PAGE)
    assert cut.status == 200 and int(cut.headers["content-length"]) == len(good)
    assert not cut.complete and 0 < len(cut.body) < len(good) and good.startswith(cut.body)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(api.url + GOOD_PAGE)

    big = raw_get(api.url, f"/big?bytes={8 << 20}")
    assert (
        int(big.headers["content-length"]) == 8 << 20 and len(big.body) == 1 << 20
    )  # cut after one chunk
    api.clear_faults()
    assert requests.get(api.url + GOOD_PAGE).content == good
    assert "Traceback" not in api.log_text()


def test_short_sends_the_whole_body_under_an_overstated_content_length(api: DemoServer) -> None:
    """kind=short sends the whole valid body but declares a larger Content-Length, then closes."""
    good = raw_get(api.url, GOOD_PAGE).body
    api.set_faults([{"kind": "short"}])
    short = raw_get(api.url, GOOD_PAGE)
    assert short.body == good and json.loads(short.body)
    assert int(short.headers["content-length"]) > len(good) and not short.complete


def test_eof_no_length_ends_a_chunked_response_cleanly_after_half_the_body(api: DemoServer) -> None:
    """kind=eof_no_length: chunked, no Content-Length, half the body, then a proper terminating
    chunk."""
    good = raw_get(api.url, GOOD_PAGE).body
    api.set_faults([{"kind": "eof_no_length"}])
    cut = raw_get(api.url, GOOD_PAGE)
    assert cut.headers.get("transfer-encoding") == "chunked" and "content-length" not in cut.headers
    assert cut.complete and cut.body == good[: len(good) // 2]


def test_stall_pauses_mid_body_then_finishes(api: DemoServer) -> None:
    """kind=stall sends part of the body promptly, goes silent for "seconds", then sends the rest
    intact."""
    good = requests.get(api.url + GOOD_PAGE).content
    api.set_faults([{"kind": "stall", "seconds": 0.5}])
    started = time.monotonic()
    with requests.get(api.url + GOOD_PAGE, stream=True) as response:
        head = response.raw.read(100)
        head_at = time.monotonic() - started
        body = head + response.raw.read()
    assert head_at < 0.4 and time.monotonic() - started >= 0.5
    assert body == good


def test_slow_drips_the_body_in_small_pieces(api: DemoServer) -> None:
    """kind=slow sends piece_bytes at a time with "delay" seconds between pieces; the body arrives
    intact."""
    good = requests.get(api.url + GOOD_PAGE).content
    api.set_faults([{"kind": "slow", "piece_bytes": 500, "delay": 0.05}])
    started = time.monotonic()
    response = requests.get(api.url + GOOD_PAGE)
    pauses = -(-len(good) // 500) - 1
    assert response.content == good and time.monotonic() - started >= pauses * 0.05


def test_html_fault_serves_an_error_page_with_status_200(api: DemoServer) -> None:
    """kind=html answers 200 with text/html content that is an HTML error page, not JSON."""
    api.set_faults([{"kind": "html"}])
    response = requests.get(api.url + GOOD_PAGE)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


def test_invalid_json_fault_serves_200_json_that_does_not_parse(api: DemoServer) -> None:
    """kind=invalid_json answers 200 application/json (correct Content-Length) with a body that is
    not JSON."""
    good = requests.get(api.url + GOOD_PAGE).content
    api.set_faults([{"kind": "invalid_json"}])
    response = requests.get(api.url + GOOD_PAGE)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.content[:100] == good[:100]
    with pytest.raises(ValueError):
        json.loads(response.content)


def test_gzip_truncated_sends_a_gzip_stream_that_stops_short(api: DemoServer) -> None:
    """kind=gzip_truncated: Content-Encoding gzip, clean HTTP framing, but the gzip stream never
    ends."""
    good = raw_get(api.url, GOOD_PAGE).body
    api.set_faults([{"kind": "gzip_truncated"}])
    response = raw_get(api.url, GOOD_PAGE)
    assert response.headers["content-encoding"] == "gzip" and response.complete
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    decoded = decoder.decompress(response.body)
    assert not decoder.eof and decoded == good[: len(good) // 2]


def test_body_shaped_faults_keep_the_pages_link_header(api: DemoServer) -> None:
    """A fault that mangles the body keeps the page's Link header; an error page drops it."""
    api.set_faults([{"kind": "eof_no_length", "pages": [1]}, {"kind": "status", "pages": [2]}])
    assert 'rel="next"' in raw_get(api.url, "/link?page=1").headers["link"]
    assert "link" not in raw_get(api.url, "/link?page=2").headers
