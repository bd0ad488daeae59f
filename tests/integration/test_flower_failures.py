"""Promise 6 on real processes: a page that fails for good is a FAILURE task in Celery's
events (what Flower shows and counts), with its error class and message and no
secret, while its message is acked and the ledger stays the truth.

Real redis-server, real `harvest worker` processes, a real ``celery.events``
receiver on the same Redis (the feed Flower reads), and a real HTTP API.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time

import requests

from support.demo import start_demo_api
from support.events import TaskEvents, broker_backlog
from support.hostile import HostileServer, Request, respond

from harvester.engine.dispatch import FINALIZE_TASK, PAGE_TASK, RUN_TASK

TOKEN = "tok-flower-Qm3x-never-shown"
PAGES = 12


def _job_id(stdout: str) -> str:
    return stdout.splitlines()[0].split()[1]


def _wait_until_acked(client, timeout: float = 20.0) -> dict[str, int]:
    """kombu's backlog once the last ack has landed (the finalizer's comes last)."""
    deadline = time.monotonic() + timeout
    while (backlog := broker_backlog(client)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return backlog


def _run_job(harvest, job_file, redis_server, url: str):
    job = job_file(url=url, params={"per_page": 5, "pages": PAGES, "api_key": "${API_TOKEN}"},
                   headers={"Authorization": "Bearer ${API_TOKEN}"},
                   pagination=f'style = "page"\npages = {PAGES}')
    return harvest("run", str(job), redis_url=redis_server.url, timeout=180)


def _page_tasks(events: TaskEvents) -> dict[int, list[str]]:
    """page -> the uuids of every task that ran it (a page task, or a run of pages)."""
    pages: dict[int, list[str]] = {}
    for uuid, args in events.tasks(PAGE_TASK).items():
        pages.setdefault(args[1], []).append(uuid)
    for uuid, args in events.tasks(RUN_TASK).items():
        for page in args[1]:
            pages.setdefault(page, []).append(uuid)
    return pages


def _task_count(events: TaskEvents) -> int:
    return len(events.tasks(PAGE_TASK)) + len(events.tasks(RUN_TASK))


def test_a_page_failed_for_good_is_a_failure_task_with_its_reason(
        harvest, job_file, redis_server, workers, tmp_path):
    """Page 7 answers 404 (not retryable) and page 3 answers 500 once (retried inside its
    task, then committed). The 12 pages travel in runs (task args name the pages each
    covers), every page in exactly one task. Celery's events show the task holding page
    7 as task-failed with the exception naming PageFailed, the page, the error class and
    the HTTP status, and a one-exception traceback; every other task (page 3's included)
    and the finalizer succeed; the token is in no event; no message is left queued or
    unacked in Redis (the failed page's message was acked); the ledger and
    _failed.jsonl record page 7 alone failed, the rest of its run committed;
    `harvest run` exits 1 as for any job with failed pages."""
    workers.env["API_TOKEN"] = TOKEN
    harvest.env["API_TOKEN"] = TOKEN
    workers.start()
    faults = [{"kind": "status", "status": 404, "paths": ["/items"], "pages": [7]},
              {"kind": "status", "status": 500, "paths": ["/items"], "pages": [3], "times": 1}]
    with TaskEvents(redis_server.url) as events, \
            start_demo_api(token=TOKEN, faults=faults) as api:
        result = _run_job(harvest, job_file, redis_server, f"{api.url}/items")
        assert api.stats()["by_page"].get("/items:3") == 2, "page 3 was retried once"
        backlog = _wait_until_acked(redis_server.client())
        events.wait_for(lambda e: any(x.get("name") == FINALIZE_TASK
                                      for x in e.of_type("task-received"))
                        and len(e.of_type("task-succeeded")) + len(e.of_type("task-failed"))
                        >= _task_count(e) + 1)

    assert result.returncode == 1, result.stderr
    job_id = _job_id(result.stdout)
    assert f"harvest retry {job_id}" in result.stderr
    assert "HTTPStatusError: HTTP 404 Not Found (page 7)" in result.stderr, \
        "the terminal says why the page failed"

    pages = _page_tasks(events)
    assert sorted(pages) == list(range(1, PAGES + 1))
    assert all(len(uuids) == 1 for uuids in pages.values()), pages
    assert _task_count(events) < PAGES, "pages travelled in runs"
    failed = events.of_type("task-failed")
    assert [e["uuid"] for e in failed] == pages[7], "exactly page 7's task failed"
    exception, traceback = failed[0]["exception"], failed[0]["traceback"]
    assert exception.startswith("PageFailed(") and "page 7 failed" in exception
    assert "HTTPStatusError" in exception and "404" in exception, exception
    assert "harvester.errors.PageFailed: page 7 failed: HTTPStatusError" in traceback
    assert "During handling" not in traceback and "The above exception" not in traceback, \
        "the traceback shows PageFailed alone, not the exceptions it was raised from"

    succeeded = {e["uuid"] for e in events.of_type("task-succeeded")}
    others = [uuid for page, uuids in pages.items() if uuids != pages[7] for uuid in uuids]
    assert set(others) <= succeeded, "every other task (page 3's too) succeeded"
    assert pages[7][0] not in succeeded
    finalizers = events.tasks(FINALIZE_TASK)
    assert finalizers and set(finalizers) <= succeeded

    dumped = json.dumps(events.snapshot())
    assert TOKEN not in dumped, "the token leaked into a Celery event"

    assert backlog == {}, f"messages left queued or unacked: {backlog}"

    failures = redis_server.client().hgetall(f"hv:{{{job_id}}}:failed")
    assert list(failures) == ["7"]
    assert json.loads(failures["7"])["error_class"] == "HTTPStatusError"
    failed_lines = [json.loads(line) for line in
                    (tmp_path / "out" / "_failed.jsonl").read_text().splitlines()]
    assert [f["page"] for f in failed_lines] == [7]
    status = json.loads(harvest("status", job_id, "--json", redis_url=redis_server.url).stdout)
    assert (status["state"], status["failed"], status["committed"]) == ("failed", 1, PAGES - 1)
    assert "raised expected: PageFailed(" in workers.logs(), \
        "Celery logs the failure as an expected error (throws=), not with a traceback"


def test_a_secret_the_api_echoes_into_the_failure_is_redacted_in_the_event(
        harvest, job_file, redis_server, workers):
    """An API that echoes the credential into the reason phrase of the 404 that fails
    page 7: the task-failed event carries the message with the token as ``***``, and no
    event holds the token in any spelling Celery would give it (repr, traceback)."""
    workers.env["API_TOKEN"] = TOKEN
    harvest.env["API_TOKEN"] = TOKEN
    workers.start()

    def items(request: Request) -> bytes:
        page = int(request.query["page"][0])
        if page == 7:
            return respond(404, {"error": "gone"},
                           reason=f"Not Found for {request.headers.get('authorization')}")
        return respond(200, {"data": [{"id": page}]})

    with HostileServer() as api, TaskEvents(redis_server.url) as events:
        api.route("/items", items)
        result = _run_job(harvest, job_file, redis_server, f"{api.url}/items")
        _wait_until_acked(redis_server.client())
        events.wait_for(lambda e: len(e.of_type("task-failed")) >= 1)

    assert result.returncode == 1, result.stderr
    assert any(TOKEN in r.headers.get("authorization", "") for r in api.requests), \
        "the API was sent (and echoed) the real token"
    failed = events.of_type("task-failed")
    assert len(failed) == 1
    assert "HTTP 404 Not Found for Bearer ***" in failed[0]["exception"], failed[0]["exception"]
    assert "HTTP 404 Not Found for Bearer ***" in failed[0]["traceback"]
    assert TOKEN not in json.dumps(events.snapshot())


def test_when_the_failed_page_is_the_last_the_job_is_still_sealed(
        harvest, job_file, redis_server, workers, api, tmp_path):
    """A one-page job whose page fails for good: that failure is the job's last
    resolution, so its task hands the finalizer on before it ends in FAILURE; the job
    is sealed (manifest, _failed.jsonl) and `harvest run` exits 1 instead of waiting."""
    workers.start()
    api.set_faults([{"kind": "status", "status": 404, "paths": ["/items"], "pages": [1]}])
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 1},
                   pagination='style = "page"\npages = 1')
    with TaskEvents(redis_server.url) as events:
        result = harvest("run", str(job), redis_url=redis_server.url, timeout=120)
        backlog = _wait_until_acked(redis_server.client())
        events.wait_for(lambda e: bool(e.tasks(FINALIZE_TASK))
                        and set(e.tasks(FINALIZE_TASK)) <= {x["uuid"] for x in
                                                            e.of_type("task-succeeded")})
    assert result.returncode == 1, result.stderr
    assert [e["uuid"] for e in events.of_type("task-failed")] == list(events.tasks(PAGE_TASK))
    assert backlog == {}
    out = tmp_path / "out"
    assert json.loads((out / "_manifest.json").read_text())["pages"]["failed"] == 1
    assert [json.loads(line)["page"] for line in
            (out / "_failed.jsonl").read_text().splitlines()] == [1]


class _Flower:
    """Real Flower, started as compose starts it (``celery -A workers.app:app flower``,
    basic auth on), on a free port of 127.0.0.1, against the test's Redis."""

    AUTH = ("ops", "flower-pw")

    def __init__(self, redis_url: str, log_path):
        from support.services import REPO_ROOT, free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HARVEST_REDIS_URL": redis_url,
               "FLOWER_BASIC_AUTH": ":".join(self.AUTH)}
        env.pop("API_TOKEN", None)  # as in compose: Flower holds no job secret
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers.app:app", "flower",
                 f"--port={self.port}", "--address=127.0.0.1"],
                env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, auth=self.AUTH, timeout=10)

    def wait_until(self, predicate, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "Flower exited"
            try:
                value = predicate()
                if value:
                    return value
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"Flower never showed {what}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _failed_counter(metrics: str) -> float:
    """Sum of Flower's Prometheus ``flower_events_total`` task-failed of page tasks."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("flower_events_total{") and 'type="task-failed"' in line \
                and (f'task="{PAGE_TASK}"' in line or f'task="{RUN_TASK}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _pages_of(task: dict) -> list[int]:
    """The pages a task Flower lists covers (its args as Flower shows them)."""
    args = ast.literal_eval(task["args"])
    return [args[1]] if isinstance(args[1], int) else list(args[1])


def test_real_flower_lists_the_failed_page_as_failure_and_counts_it(
        harvest, job_file, redis_server, workers, tmp_path):
    """Real Flower (from PyPI, started as compose starts it) watching a job whose page 7
    fails for good with a 404: its task API lists exactly one FAILURE task, page 7's,
    with PageFailed and the error class in its exception and no token; its Prometheus
    /metrics counts one harvester.page task-failed event; every other page is SUCCESS."""
    workers.env["API_TOKEN"] = TOKEN
    harvest.env["API_TOKEN"] = TOKEN
    workers.start()
    flower = _Flower(redis_server.url, tmp_path / "flower.log")
    try:
        # Worker heartbeats reach Flower only through its event receiver: once a worker
        # is online in /metrics, Flower is subscribed and no task event will be missed.
        flower.wait_until(lambda: "flower_worker_online{" in flower.get("/metrics").text,
                          "a worker online")
        faults = [{"kind": "status", "status": 404, "paths": ["/items"], "pages": [7]}]
        with start_demo_api(token=TOKEN, faults=faults) as api:
            result = _run_job(harvest, job_file, redis_server, f"{api.url}/items")
        assert result.returncode == 1, result.stderr

        def settled():
            tasks = flower.get("/api/tasks").json()
            ours = [t for t in tasks.values() if t["name"] in (PAGE_TASK, RUN_TASK)]
            covered = sum(len(_pages_of(t)) for t in ours
                          if t["state"] in ("SUCCESS", "FAILURE"))
            return tasks if covered == PAGES else None

        tasks = flower.wait_until(settled, "every page task finished")
        def counted():
            text = flower.get("/metrics").text
            return text if _failed_counter(text) else None

        metrics = flower.wait_until(counted, "a task-failed event in /metrics")
    finally:
        flower.stop()

    page_tasks = [t for t in tasks.values() if t["name"] in (PAGE_TASK, RUN_TASK)]
    failures = [t for t in page_tasks if t["state"] == "FAILURE"]
    assert len(failures) == 1, [(t["args"], t["state"]) for t in page_tasks]
    assert 7 in _pages_of(failures[0]), failures[0]["args"]
    assert "PageFailed" in failures[0]["exception"] and "page 7 failed" in \
        failures[0]["exception"]
    assert "HTTPStatusError" in failures[0]["exception"], failures[0]["exception"]
    assert all(t["state"] == "SUCCESS" for t in page_tasks if t is not failures[0])
    assert _failed_counter(metrics) == 1.0
    assert TOKEN not in json.dumps(tasks) and TOKEN not in metrics
