"""Redis restarted again and again under two running `harvest worker` processes."""

from __future__ import annotations

import time

import psutil
import redis

from support.jobs import job_toml
from support.services import wait_for
from support.output import assert_exactly_once

PAGES = 2500
RESTARTS = 10


def _job_state(client: redis.Redis) -> dict[str, str]:
    """The job's ledger hash, or {} while Redis is unreachable or the job is not there yet."""
    try:
        keys = client.keys("hv:*:job")
        return client.hgetall(keys[0]) if keys else {}
    except redis.RedisError:
        return {}




def _alive(process) -> list[str]:
    """What is dead in a worker's process tree ([] when the worker and its children live)."""
    if process.poll() is not None:
        return [f"worker {process.pid} exited {process.returncode}"]
    dead = []
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return [f"worker {process.pid} is gone"]
    for child in children:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                dead.append(f"child {child.pid} of worker {process.pid} is a zombie")
        except psutil.NoSuchProcess:
            dead.append(f"child {child.pid} of worker {process.pid} is gone")
    return dead


def _fatal(logs: str) -> str:
    """The worker log lines that say why a worker died (or the log's tail)."""
    lines = [line for line in logs.splitlines()
             if "Unrecoverable" in line or "AttributeError" in line]
    return "\n".join(lines[-20:]) or logs[-3000:]


def test_workers_outlive_ten_redis_restarts(tmp_path, harvest, workers, redis_server, api):
    """Redis killed or shut down and started again on its port 10 times (AOF on, ~0.5 s
    down each time) while two external `harvest worker` processes publish, run and ack
    pages: both workers (and any pool children) are still alive at the end, none of them
    logged an AttributeError, the job ends 0, and every page is in the output exactly once.

    Pins issue 8: a connection error used to leave the broker channel closed, and the next
    client it built (workers/broker.py) read ``self.connection.client.hostname`` off a
    closed transport, raising an AttributeError that killed the worker for good."""
    # ~0.1 s per page, so 2 workers x 4 threads take well over the restarts' ~35 s.
    api.set_faults([{"kind": "slow", "paths": ["/items"], "every": 1, "piece_bytes": 128,
                     "delay": 0.02}])
    workers.start()
    job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                   params={"per_page": 5, "pages": PAGES},
                   pagination=f'style = "page"\npages = {PAGES}',
                   http="timeout_connect = 2\ntimeout_read = 5\npage_deadline = 30\n"
                        "retries = 5\nbackoff_factor = 0.05\nbackoff_max = 0.5")
    run = harvest.popen("run", str(job), redis_url=redis_server.url)
    client = redis_server.client()
    wait_for(lambda: int(_job_state(client).get("committed") or 0) >= 50, 60,
              "the job to make progress")

    for restart in range(RESTARTS):
        if restart % 2:
            redis_server.stop()  # SHUTDOWN: clients see a clean close
        else:
            redis_server.kill()  # SIGKILL: clients see a reset mid-command
        time.sleep(0.5)
        redis_server.start()
        # Let the workers reconnect and get back to publishing and acking pages, so the
        # next restart lands while messages are in flight.
        before = int(_job_state(client).get("committed") or 0)
        wait_for(lambda b=before: int(_job_state(client).get("committed") or 0) > b + 8, 30,
                  f"pages to commit after restart {restart + 1}")
        assert _job_state(client).get("state") != "done", "the job ended before the restarts did"
        dead = [problem for process in workers.processes for problem in _alive(process)]
        assert not dead, (f"after restart {restart + 1}", dead, _fatal(workers.logs()))

    assert run.wait(timeout=180) == 0, run.stderr.read()
    dead = [problem for process in workers.processes for problem in _alive(process)]
    logs = workers.logs()
    assert not dead, (dead, _fatal(logs))
    assert "AttributeError" not in logs, _fatal(logs)
    assert (tmp_path / "out" / "_SUCCESS").exists()
    assert_exactly_once(tmp_path / "out", range(1, PAGES + 1))
