"""Failure records say what really happened: requests really sent, a timeout called a
timeout, a records_path that does not fit failed at once naming the keys that are
there, a binary or HTML body named by its Content-Type in printable text."""

from __future__ import annotations

import time

from support.hostile import HostileServer, Request, respond
from support.output import failed_lines


def _run(job_file, harvest, redis_server, url: str, name: str, **kwargs):
    job = job_file(name=name, out=f"out-{name}", url=url, params={"per_page": 1},
                   pagination='style = "page"\npages = 1', **kwargs)
    return harvest("run", str(job), redis_url=redis_server.url, timeout=240)


def test_failure_records_name_the_real_cause_and_count_real_requests(
        job_file, harvest, redis_server, workers, tmp_path):
    """Against a raw-socket server counting requests per path (job: retries = 2):
    - a read timeout is 'timed out ... timeout_read', class RequestTimeout, with
      attempts equal to the requests the server saw (urllib3's retries included);
    - a 200 without the records_path array fails after ONE request, class
      RecordsNotFound, the message listing the keys the body has;
    - an HTML page and a binary body fail with printable messages naming their
      Content-Type, never a bytes repr."""
    workers.start()
    server = HostileServer()

    def slow(request: Request) -> bytes:
        time.sleep(6)
        return respond(200, {"data": []})

    html = b"<!DOCTYPE html><html><body>Service temporarily unavailable</body></html>"
    binary = bytes(range(256)) * 4
    server.route("/slow", slow)
    server.route("/wrong-shape", lambda r: respond(200, {"results": [1], "count": 1,
                                                         "next": None}))
    server.route("/html", lambda r: respond(200, raw_body=html,
                                            headers={"Content-Type": "text/html"}))
    server.route("/binary", lambda r: respond(
        200, raw_body=binary, headers={"Content-Type": "application/octet-stream"}))
    records = 'mode = "records"\nrecords_path = "data"'
    with server:
        results = {
            "slow": _run(job_file, harvest, redis_server, server.url + "/slow", "slow"),
            "shape": _run(job_file, harvest, redis_server, server.url + "/wrong-shape",
                          "shape", extra=records),
            "html": _run(job_file, harvest, redis_server, server.url + "/html", "html"),
            "binary": _run(job_file, harvest, redis_server, server.url + "/binary", "binary"),
        }
        seen = {path: sum(1 for r in server.requests if r.path == path)
                for path in ("/slow", "/wrong-shape", "/html", "/binary")}
    failures = {}
    for name, result in results.items():
        assert result.returncode == 1, (name, result.stderr)
        [failures[name]] = failed_lines(tmp_path / f"out-{name}")

    slow = failures["slow"]
    assert slow["error_class"] == "RequestTimeout", slow
    assert "timed out" in slow["message"] and "timeout_read" in slow["message"]
    assert "cannot connect" not in slow["message"]
    assert slow["attempts"] == seen["/slow"] == 3, (slow, seen)

    shape = failures["shape"]
    assert shape["error_class"] == "RecordsNotFound", shape
    assert seen["/wrong-shape"] == 1 and shape["attempts"] == 1, "a job error is not retried"
    assert "'data'" in shape["message"]
    assert all(key in shape["message"] for key in ("results", "count", "next"))

    for name, kind in (("html", "text/html"), ("binary", "application/octet-stream")):
        message = failures[name]["message"]
        assert kind in message, message
        assert "b'" not in message and "\\x" not in message, message
        assert message.isprintable(), message
