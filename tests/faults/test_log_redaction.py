"""Secrets never reach a log line, whoever writes it: urllib3's own retry warnings
included, on connect errors, read timeouts and redirects, with the secret in the
path, the query and a header. Real worker processes, real sockets."""

from __future__ import annotations

import time

from support.hostile import HostileServer, Request, respond
from support.output import failed_lines
from support.services import free_port

SECRETS = {"PATH_SECRET": "pathsecret4711", "QUERY_SECRET": "querysecret0815",
           "HEADER_SECRET": "headersecret2323"}


def _job(job_file, url: str, name: str):
    return job_file(name=name, out=f"out-{name}", url=url + "/${PATH_SECRET}/items",
                    params={"key": "${QUERY_SECRET}", "per_page": 1},
                    headers={"X-Api-Key": "${HEADER_SECRET}"},
                    pagination='style = "page"\npages = 2')


def _assert_nowhere(texts: dict[str, str]) -> None:
    for where, text in texts.items():
        for name, value in SECRETS.items():
            assert value not in text, f"{name} in clear in {where}"


def test_no_secret_in_any_log_line_on_connect_errors_timeouts_and_redirects(
        job_file, harvest, redis_server, workers, tmp_path):
    """Three jobs whose secrets sit in the URL path, the query and a header: one against a
    closed port (urllib3 logs 'Retrying ... NewConnectionError ... /path?query'), one
    against a server that never answers in time (read timeouts), one redirected with the
    secrets echoed into the Location. Each worker log line, the CLI's output and
    _failed.jsonl hold '***' where a secret was, never the secret; and the urllib3 retry
    warnings really were logged (the test would pass vacuously otherwise)."""
    workers.env.update(SECRETS, HARVEST_LOG_LEVEL="INFO")
    harvest.env.update(SECRETS)
    workers.start()
    server = HostileServer()

    def slow(request: Request) -> bytes:
        time.sleep(6)  # longer than timeout_read (5 s)
        return respond(200, {"data": []})

    def redirect(request: Request) -> bytes:
        if request.path.endswith("/there"):
            return respond(500, {"echo": request.target}, reason=f"no {request.target}")
        target = request.target.replace("/items", "/items/there")
        return respond(302, {}, reason="Found", headers={"Location": target})

    server.route(f"/slow/{SECRETS['PATH_SECRET']}/items", slow)
    server.route(f"/redirect/{SECRETS['PATH_SECRET']}/items", redirect)
    server.route(f"/redirect/{SECRETS['PATH_SECRET']}/items/there", redirect)
    closed = f"http://127.0.0.1:{free_port()}"
    with server:
        jobs = {"connect": _job(job_file, closed, "connect"),
                "timeout": _job(job_file, server.url + "/slow", "timeout"),
                "redirect": _job(job_file, server.url + "/redirect", "redirect")}
        results = {name: harvest("run", str(job), redis_url=redis_server.url, timeout=240)
                   for name, job in jobs.items()}
    for name, result in results.items():
        assert result.returncode == 1, (name, result.stderr)
        failed = failed_lines(tmp_path / f"out-{name}")
        assert [f["page"] for f in failed] == [1, 2], (name, failed)
        _assert_nowhere({f"{name} stdout": result.stdout, f"{name} stderr": result.stderr,
                         f"{name} _failed.jsonl": str(failed)})
        assert "${PATH_SECRET}" in failed[0]["url"], "failure records show the template"
    workers.stop()
    logs = {str(path): path.read_text(errors="replace")
            for path in workers.log_dir.glob("*.log")}
    _assert_nowhere(logs)
    every_line = "\n".join(logs.values())
    assert "Retrying" in every_line and "NewConnectionError" in every_line, \
        "urllib3's retry warnings were not logged: nothing was tested"
    assert "ReadTimeoutError" in every_line or "Read timed out" in every_line
    assert "/***/items" in every_line and "key=***" in every_line
