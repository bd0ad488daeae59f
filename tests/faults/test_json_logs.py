"""Promise 6 with HARVEST_LOG_FORMAT=json on real worker processes: every line each
process writes, on stdout and on stderr, is one JSON object (Celery's banner,
warnings, tracebacks and shutdown notices included), and a Redis outage is logged
once per process, not once a second."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from support.jobs import job_toml
from support.output import assert_exactly_once
from support.services import HARVEST, REPO_ROOT, kill_tree

PAGES = 160
OUTAGE_SECONDS = 10


def _start_worker(env: dict[str, str], logs: Path, index: int) -> subprocess.Popen:
    """`harvest worker` with its stdout and stderr in two files of their own."""
    with open(logs / f"worker-{index}.out", "wb") as out, \
            open(logs / f"worker-{index}.err", "wb") as err:
        return subprocess.Popen([*HARVEST, "worker", "-c", "4", "-n", f"json{index}@%h"],
                                env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=REPO_ROOT)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.wait()


def _committed(client) -> int:
    keys = client.keys("hv:*:job")
    return int(client.hget(keys[0], "committed") or 0) if keys else 0


def _json_lines(path: Path) -> list[dict]:
    """Every line of ``path`` as JSON; fails naming the first line that is not."""
    lines = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line[:300]!r}") \
                from None
        assert isinstance(lines[-1], dict), f"{path.name} line {number}: {line[:300]!r}"
    return lines


def _about_redis(entry: dict) -> bool:
    """A warning-or-worse line about Redis or the broker being away."""
    text = json.dumps(entry).lower()
    return entry.get("level") in ("warning", "error", "critical") and \
        any(word in text for word in ("redis", "broker", "connect"))


def _kind(entry: dict) -> tuple[str, str]:
    """What a line says, whatever its numbers and ids."""
    return entry.get("logger", ""), re.sub(r"[0-9a-f-]{36}|\d+", "#", str(entry.get("event")))


def test_json_workers_write_only_json_and_log_a_redis_outage_once(
        api, env, redis_server, harvest, tmp_path):
    """Two `harvest worker` processes with HARVEST_LOG_FORMAT=json, stdout and stderr
    captured apart, run a job whose pages are in flight when Redis is stopped for 10 s
    and started again. The job still ends 0 with every page once; every line of every
    stream (startup, the outage, SIGTERM shutdown) parses as a JSON object; no Celery
    banner is printed; and each process says each thing about the outage once: Celery's
    "connection lost", kombu's "Cannot connect", the harvester's `redis.unavailable`
    (from whichever thread met it first) and, if a task finished just then, kombu's
    "Couldn't ack": at most 5 warning-or-worse lines, none repeated, where it used to
    log dozens (several every 2 s); then one `redis.available` when Redis is back."""
    logs = tmp_path / "logs"
    logs.mkdir()
    worker_env = {**env, "HARVEST_REDIS_URL": redis_server.url, "HARVEST_LOG_FORMAT": "json"}
    workers = [_start_worker(worker_env, logs, i) for i in range(2)]
    try:
        # Slow bodies keep pages in flight, so page threads wait for Redis too.
        api.set_faults([{"kind": "slow", "paths": ["/items"], "every": 1, "piece_bytes": 128,
                         "delay": 0.05}])
        job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                       params={"per_page": 5, "pages": PAGES},
                       pagination=f'style = "page"\npages = {PAGES}')
        run = harvest.popen("run", str(job), redis_url=redis_server.url)
        client = redis_server.client()
        deadline = time.monotonic() + 60
        while _committed(client) < 20:
            assert time.monotonic() < deadline and run.poll() is None, "the job made no progress"
            time.sleep(0.1)
        redis_server.stop()
        time.sleep(OUTAGE_SECONDS)
        redis_server.start()
        assert run.wait(timeout=300) == 0, run.stderr.read()
    finally:
        for worker in workers:
            _stop(worker)
    assert_exactly_once(tmp_path / "out", range(1, PAGES + 1))

    for index in range(2):
        out = _json_lines(logs / f"worker-{index}.out")
        err = _json_lines(logs / f"worker-{index}.err")
        entries = out + err
        text = json.dumps(entries)
        assert "[tasks]" not in text and "-------------- " not in text, "no Celery banner"
        assert any(e.get("event") == "page.committed" for e in entries), "the worker worked"
        assert any("shutdown" in str(e.get("event", "")).lower() for e in entries), \
            "Celery's shutdown notice is a JSON line too"
        about_redis = [e for e in entries if _about_redis(e)]
        assert about_redis, "the outage was noticed"
        kinds = [_kind(e) for e in about_redis]
        assert len(about_redis) <= 5 and len(set(kinds)) == len(kinds), (
            f"worker {index} logged {len(about_redis)} lines about Redis:\n"
            + "\n".join(json.dumps(e)[:400] for e in about_redis))
        assert sum(e.get("event") == "redis.unavailable" for e in about_redis) <= 1
        back = [e for e in entries if e.get("event") == "redis.available"]
        assert len(back) == 1 and back[0]["level"] == "info", back
