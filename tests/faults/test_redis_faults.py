"""Redis restarted, frozen, or restarted without persistence, mid-job, with real
worker processes and a running `harvest run`."""

from __future__ import annotations

import os
import signal
import time

from support.output import assert_exactly_once
from support.services import RedisServer

from support.jobs import job_toml

TOKEN = "tok-redis-fault-9f2c"


def _job(tmp_path, api, pages):
    return job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                    params={"per_page": 5, "pages": pages, "api_key": "${API_TOKEN}"},
                    headers={"Authorization": "Bearer ${API_TOKEN}"},
                    pagination=f'style = "page"\npages = {pages}')


def _wait_for_progress(client, job_id_holder, minimum, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        keys = client.keys("hv:*:job")
        if keys and int(client.hget(keys[0], "committed") or 0) >= minimum:
            return keys[0]
        time.sleep(0.05)
    raise AssertionError("the job made no progress")


def test_redis_restart_with_aof_mid_job(tmp_path, harvest, workers, redis_server):
    """Redis shut down and restarted (AOF on) during a 2,000-page job with two external
    `harvest worker` processes: the job ends 0 with every page exactly once, and no Redis key
    and no byte of the AOF holds the API token."""
    from support.demo import start_demo_api

    workers.env["API_TOKEN"] = TOKEN
    workers.start()
    with start_demo_api(token=TOKEN) as api:
        harvest.env["API_TOKEN"] = TOKEN
        process = harvest.popen("run", str(_job(tmp_path, api, 2000)),
                                redis_url=redis_server.url)
        _wait_for_progress(redis_server.client(), None, 300)
        redis_server.stop()  # SHUTDOWN: AOF flushed, every client disconnected
        time.sleep(2)
        redis_server.start()
        assert process.wait(timeout=300) == 0, process.stderr.read()
        stderr = process.stderr.read()
    assert_exactly_once(tmp_path / "out", range(1, 2001))
    client = redis_server.client()
    for key in client.scan_iter("*"):
        assert TOKEN not in key
        dumped = client.dump(key) or b""
        assert TOKEN.encode() not in dumped, key
    aof = b"".join(p.read_bytes() for p in (tmp_path / "redis").rglob("*") if p.is_file())
    assert len(aof) > 10_000 and TOKEN.encode() not in aof
    assert TOKEN not in workers.logs() and TOKEN not in stderr


def test_redis_unreachable_for_30_seconds(tmp_path, harvest, workers, redis_server, api):
    """Redis frozen (SIGSTOP) for 30 s mid-job: workers and `harvest run` wait, then carry
    on, and the job ends exact."""
    workers.env["API_TOKEN"] = TOKEN
    workers.start()
    process = harvest.popen("run", str(_job(tmp_path, api, 1500)), redis_url=redis_server.url)
    _wait_for_progress(redis_server.client(), None, 200)
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        time.sleep(30)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert process.wait(timeout=400) == 0, process.stderr.read()
    assert_exactly_once(tmp_path / "out", range(1, 1501))


def test_restart_without_persistence_never_reports_success(tmp_path, harvest, env, api):
    """A Redis without persistence killed and restarted mid-job loses the job: `harvest run`
    stops with a message saying what happened and how to recover, exit 4, and the output dir
    gets no manifest and no _SUCCESS."""
    from support.services import Workers

    server = RedisServer(tmp_path / "volatile", appendonly=False).start()
    pool = Workers(server.url, {**env, "API_TOKEN": TOKEN}, tmp_path / "logs").start()
    try:
        api.set_faults([{"kind": "slow", "paths": ["/items"], "every": 1, "piece_bytes": 256,
                         "delay": 0.05}])
        process = harvest.popen("run", str(_job(tmp_path, api, 400)), redis_url=server.url)
        _wait_for_progress(server.client(), None, 10)
        server.kill()
        server.start()
        assert process.wait(timeout=120) == 4
        stderr = process.stderr.read()
    finally:
        pool.stop()
        server.kill()
    assert "no longer has job" in stderr and "appendonly" in stderr
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists() and not (out / "_manifest.json").exists()
