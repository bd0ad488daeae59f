"""Promises 1, 5 and 6 on real processes: constant memory for a 1 GiB page; the API
token reaches the API and nothing else; structured JSON logs bound to job and page."""

from __future__ import annotations

import gzip
import json
import threading
import time

import psutil
import redis

from support.demo import start_demo_api
from support.services import tree_rss

TOKEN = "tok-Zq8vX1-never-store-me"


class Monitor(threading.Thread):
    """Records every command Redis executes (task messages included) via MONITOR."""

    def __init__(self, client: redis.Redis):
        super().__init__(daemon=True)
        self.client = client
        self.commands: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with self.client.monitor() as monitor:
            for command in monitor.listen():
                self.commands.append(command["command"])
                if self.stopping.is_set():
                    return


def test_token_is_sent_to_the_api_and_stored_nowhere(job_file, harvest, redis_server, workers,
                                                     tmp_path):
    """`${API_TOKEN}` in a header and in a query parameter authenticates every request, yet
    the token appears in no Redis command or key, no AOF, no worker log, no CLI output, no
    manifest, no _failed.jsonl and no shard; worker logs are JSON bound to job, page, attempt."""
    workers.env.update(API_TOKEN=TOKEN, HARVEST_LOG_FORMAT="json")
    workers.env["HARVEST_LOG_LEVEL"] = "INFO"
    monitor = Monitor(redis_server.client())
    monitor.start()
    workers.start()
    with start_demo_api(token=TOKEN,
                        faults=[{"kind": "status", "status": 500, "pages": [4]}]) as api:
        job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 12,
                                                        "api_key": "${API_TOKEN}"},
                       headers={"Authorization": "Bearer ${API_TOKEN}"},
                       pagination='style = "page"\npages = 12')
        result = harvest("run", str(job), redis_url=redis_server.url)
        stats = api.stats()
    assert result.returncode == 1, result.stderr  # page 4 failed on purpose
    assert stats["by_page"].get("/items:1") == 1, "requests reached the API authenticated"

    time.sleep(0.5)
    monitor.stopping.set()
    redis_server.client().ping()  # wakes the monitor so it sees the stop flag
    out = tmp_path / "out"
    failed = (out / "_failed.jsonl").read_text()
    assert "page=4" in failed and "api_key=%24%7BAPI_TOKEN%7D" not in failed
    assert "${API_TOKEN}" in failed, "the URL keeps the template, not the value"

    places = {
        "redis commands": "\n".join(monitor.commands),
        "redis keys": _dump_all(redis_server.client()),
        "aof": "".join(p.read_text(errors="replace")
                       for p in (tmp_path / "redis").rglob("*") if p.is_file()),
        "worker logs": workers.logs(),
        "cli output": result.stdout + result.stderr,
        "manifest": (out / "_manifest.json").read_text(),
        "failed": failed,
        "shards": "".join(gzip.decompress(p.read_bytes()).decode() for p in out.glob("part-*")),
    }
    assert len(places["redis commands"]) > 1000, "the monitor saw the job's traffic"
    for place, text in places.items():
        assert TOKEN not in text, f"the token leaked into {place}"

    events = [json.loads(line) for line in workers.logs().splitlines() if line.startswith("{")]
    committed = [e for e in events if e.get("event") == "page.committed"]
    assert len(committed) == 11
    assert all(e["job_id"].startswith("test-") and "page" in e and "attempt" in e
               for e in committed)
    assert any(e.get("logger", "").startswith("celery") for e in events), \
        "Celery's own lines go through the same JSON pipeline"


def _dump_all(client: redis.Redis) -> str:
    dumped = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == "string":
            dumped.append(client.get(key) or "")
        elif kind == "hash":
            dumped.append(json.dumps(client.hgetall(key)))
        elif kind == "list":
            dumped.append(json.dumps(client.lrange(key, 0, -1)))
        elif kind == "set":
            dumped.append(json.dumps(sorted(client.smembers(key))))
        elif kind == "zset":
            dumped.append(json.dumps(client.zrange(key, 0, -1)))
        dumped.append(key)
    return "\n".join(dumped)


def test_one_gib_page_streams_in_constant_memory(api, job_file, harvest, tmp_path):
    """A single 1 GiB response is harvested with --local while no process of the run (the
    CLI, its Redis, its workers, and the API server) goes above 100 MB RSS."""
    size = 1 << 30
    job = job_file(url=f"{api.url}/big", params={"bytes": size},
                   pagination='style = "page"\npages = 1',
                   extra="compress_level = 1")
    job.write_text(job.read_text().replace("page_deadline = 30", "page_deadline = 300"))
    process = harvest.popen("run", str(job), "--local", "--workers", "1")
    peak: dict[int, int] = {}
    names: dict[int, str] = {}
    while process.poll() is None:
        for pid, rss in {**tree_rss(process.pid), **tree_rss(api.process.pid)}.items():
            if rss > peak.get(pid, 0):
                peak[pid] = rss
                try:
                    names[pid] = " ".join(psutil.Process(pid).cmdline()[:4])
                except psutil.Error:
                    pass
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr
    out = tmp_path / "out"
    meta = json.loads((out / "_manifest.json").read_text())
    assert meta["raw_bytes"] > size, "the whole page is in the shard"
    assert len(peak) >= 4, f"sampled the CLI, redis, a worker and the API: {names}"
    worst = max(peak.values())
    assert worst < 100 * 2**20, {names.get(pid, pid): rss // 2**20 for pid, rss in peak.items()}
    assert harvest("verify", str(out), timeout=600).returncode == 0
