"""Nothing lost, nothing doubled: killed workers, duplicate deliveries and a
killed finalizer, on real Redis, real worker processes and the demo API."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path

import psutil
import redis

from support.demo import start_demo_api
from support.output import assert_exactly_once, manifest
from support.services import committed_pages, kill_tree


class StderrReader(threading.Thread):
    """Collects a process's stderr lines as they come."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no stderr line matching {pattern!r}: {''.join(self.lines)[-2000:]}")


def _worker_pids(harvest_pid: int) -> list[int]:
    pids = []
    for child in psutil.Process(harvest_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "celery" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # exited (or a zombie not yet reaped) meanwhile
            pass
    return pids


def test_worker_trees_killed_three_times(job_file, harvest, tmp_path):
    """SIGKILL of a worker's whole process tree, three times during a --local job: the job
    still ends with every page exactly once, each page that was running on a killed worker is
    committed again within 30 s, and the dead worker is replaced. (Leases of 6 s, so the
    job can be shorter: the recovery path is the same at any lease.)"""
    harvest.env["HARVEST_LEASE_SECONDS"] = "6"
    with start_demo_api(latency_ms=300) as slow_api:
        job = job_file(url=f"{slow_api.url}/items", params={"per_page": 5, "pages": 900},
                       pagination='style = "page"\npages = 900')
        process = harvest.popen("run", str(job), "--local", "--workers", "2", "--threads", "4")
        reader = StderrReader(process.stderr)
        reader.start()
        redis_url = reader.wait_for(r"local cluster: redis (\S+)").group(1)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        job_id = process.stdout.readline().split()[1]

        kills = []  # (killed at, pages that were running then)
        for _ in range(3):
            time.sleep(4)
            pids = []
            deadline = time.monotonic() + 30
            while len(pids) < 2 and time.monotonic() < deadline:
                pids = _worker_pids(process.pid)
                time.sleep(0.2)
            # The victim's own pages (a run leases all its pages when it starts; pages
            # that other workers' runs hold, or handed back, are not the victim's).
            doomed = _tree_pids(pids[0])
            running = [page for page, owner in client.hgetall(f"hv:{{{job_id}}}:owner").items()
                       if any(owner.endswith(f"-{pid}") for pid in doomed)]
            kill_tree(pids[0])
            kills.append((time.monotonic(), set(running)))
        recoveries = [None] * len(kills)
        while None in recoveries and time.monotonic() - kills[0][0] < 120:
            committed = committed_pages(client, job_id)
            for index, (killed_at, pages) in enumerate(kills):
                if recoveries[index] is None and {int(p) for p in pages} <= committed:
                    recoveries[index] = time.monotonic() - killed_at
            time.sleep(0.2)
        assert all(kill[1] for kill in kills), "every kill hit a worker with running pages"

        assert process.wait(timeout=300) == 0, "".join(reader.lines)[-3000:]
        print(f"\nkilled pages committed again after {[round(s, 1) for s in recoveries]} s")
        assert all(seconds <= 30 for seconds in recoveries), recoveries
        assert "restarting" in "".join(reader.lines)
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, range(1, 901))
    assert harvest("verify", str(out)).returncode == 0


def test_duplicate_page_tasks_leave_one_copy(api, job_file, harvest, redis_server, workers,
                                             tmp_path):
    """Every page sent again while the job runs, as a page task and inside a run of 10
    (a run delivered twice), and again both ways after it is final: each page is in the
    output exactly once."""
    from workers.app import make_app
    from harvester.engine.dispatch import CeleryDispatcher
    from harvester.settings import Settings

    workers.start()
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 300},
                   pagination='style = "page"\npages = 300')
    submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[1]
    settings = Settings.from_env()
    dispatcher = CeleryDispatcher(make_app(settings.__class__(**{**settings.__dict__,
                                                                 "redis_url": redis_server.url})),
                                  run_pages=10)
    for page in range(1, 301):
        dispatcher.send_page(job_id, page)
    dispatcher.send_pages(job_id, list(range(1, 301)))
    client = redis_server.client()
    deadline = time.monotonic() + 120
    while client.hget(f"hv:{{{job_id}}}:job", "state") != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.glob("part-*")}
    for page in range(1, 301):
        dispatcher.send_page(job_id, page)
    dispatcher.send_pages(job_id, list(range(1, 301)))
    dispatcher.send_finalize(job_id)
    time.sleep(3)
    assert sum(client.llen(q) for q in client.keys("harvest*")) == 0, "duplicates consumed"
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == before
    assert_exactly_once(out, range(1, 301))
    assert harvest("verify", str(out)).returncode == 0
    logs = workers.logs()
    assert "page.skipped" in logs


def _part_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("part-*.jsonl.gz")}


def test_finalizer_killed_midway_gives_the_same_output(api, job_file, harvest, redis_server,
                                                        workers, tmp_path):
    """Workers SIGKILLed while the finalizer is writing parts: once a worker is back, the
    finalizer's lease runs out, it runs again and the parts written before the kill come out
    byte-identical; the output is exact and a third run changes nothing."""
    workers.env["HARVEST_LEASE_SECONDS"] = "6"  # the finalizer's lease runs out sooner
    workers.env["HARVEST_PART_BYTES"] = "2048"  # many small parts: a long finalization
    workers.start()
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 3000},
                   pagination='style = "page"\npages = 3000')
    submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
    job_id = submitted.stdout.split()[1]
    out = tmp_path / "out"
    deadline = time.monotonic() + 180
    while len(list(out.glob("part-*.jsonl.gz"))) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    for process in workers.processes:
        kill_tree(process.pid)
    assert not (out / "_manifest.json").exists(), "the finalizer finished before the kill"
    written = _part_hashes(out)
    client = redis_server.client()
    assert client.hget(f"hv:{{{job_id}}}:job", "state") == "finalizing"

    workers.processes.clear()
    workers.count = 1
    workers.start()
    deadline = time.monotonic() + 90
    while client.hget(f"hv:{{{job_id}}}:job", "state") != "done" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.hget(f"hv:{{{job_id}}}:job", "state") == "done"
    after = _part_hashes(out)
    assert {name: after[name] for name in written} == written
    assert_exactly_once(out, range(1, 3001))
    assert harvest("verify", str(out)).returncode == 0

    sealed = manifest(out)
    again = harvest("finalize", job_id, redis_url=redis_server.url)
    assert again.returncode == 0, again.stderr
    assert manifest(out) == sealed and _part_hashes(out) == after
    assert not (out / ".segments").exists()


def test_a_worker_killed_mid_run_loses_only_its_uncommitted_pages(job_file, harvest,
                                                                   redis_server, workers,
                                                                   tmp_path):
    """Pages travel in runs of 8 (HARVEST_RUN_PAGES). One of two workers is SIGKILLed
    while it holds runs: the pages committed before the kill are never requested again;
    the pages of its runs it had not committed (leased to it at once when each run
    began) come back with their leases and are committed within 30 s; the job ends with
    every page exactly once."""
    workers.env["HARVEST_LEASE_SECONDS"] = "6"  # the lost pages come back sooner
    workers.env["HARVEST_RUN_PAGES"] = "8"
    harvest.env["HARVEST_RUN_PAGES"] = "8"
    workers.threads = 2
    workers.start()
    with start_demo_api(latency_ms=150) as slow_api:
        job = job_file(url=f"{slow_api.url}/items", params={"per_page": 5, "pages": 240},
                       pagination='style = "page"\npages = 240')
        submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split()[1]
        client = redis_server.client()
        victim = workers.processes[0]
        deadline = time.monotonic() + 60
        held: set[int] = set()
        while time.monotonic() < deadline:
            owners = client.hgetall(f"hv:{{{job_id}}}:owner")
            names = set(owners.values())
            # Worker names end in the pid of the process that runs the pages.
            mine = {int(page) for page, owner in owners.items()
                    if any(owner.endswith(f"-{pid}") for pid in _tree_pids(victim.pid))}
            committed_before = committed_pages(client, job_id)
            if len(mine - committed_before) > 2 and len(committed_before) > 16 \
                    and len(names) > 1:
                held = mine - committed_before
                break
            time.sleep(0.05)
        assert held, "the worker never held a run"
        kill_tree(victim.pid)
        killed_at = time.monotonic()
        victim.wait()
        lost = held
        while not lost <= committed_pages(client, job_id) and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
        recovered = time.monotonic() - killed_at
        while client.hget(f"hv:{{{job_id}}}:job", "state") != "done" and \
                time.monotonic() - killed_at < 120:
            time.sleep(0.2)
        by_page = slow_api.stats()["by_page"]
    assert client.hget(f"hv:{{{job_id}}}:job", "state") == "done"
    assert recovered <= 30, f"the lost pages came back after {recovered:.1f} s"
    refetched = sorted(p for p in committed_before if by_page.get(f"/items:{p}", 0) != 1)
    assert not refetched, f"pages committed before the kill were requested again: {refetched}"
    assert_exactly_once(tmp_path / "out", range(1, 241))


def _tree_pids(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {root.pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.Error:
        return set()



def test_a_run_of_slow_pages_is_handed_back_in_runs_of_about_a_second(
        job_file, harvest, redis_server, workers, tmp_path):
    """40 pages that take 0.4 s each leave the coordinator as runs of 20
    (HARVEST_RUN_PAGES). A run keeps its thread for about a second of work: after two
    pages it hands the rest back in runs of about a second (two pages here, a single
    page for an odd one out), which the other threads share. Celery's events show
    every handed-back page in exactly one such message and the output holds every
    page exactly once."""
    from support.events import TaskEvents

    from harvester.engine.dispatch import PAGE_TASK, RUN_TASK

    workers.env["HARVEST_RUN_PAGES"] = "20"
    harvest.env["HARVEST_RUN_PAGES"] = "20"
    workers.start()
    with start_demo_api(latency_ms=400) as slow_api, TaskEvents(redis_server.url) as events:
        job = job_file(url=f"{slow_api.url}/items", params={"per_page": 5, "pages": 40},
                       pagination='style = "page"\npages = 40')
        result = harvest("run", str(job), redis_url=redis_server.url, timeout=300)
        assert result.returncode == 0, result.stderr
        events.wait_for(lambda e: sum(len(args[1]) if isinstance(args[1], list) else 1
                                      for args in [*e.tasks(PAGE_TASK).values(),
                                                   *e.tasks(RUN_TASK).values()]) >= 70)
        messages = [[args[1]] for args in events.tasks(PAGE_TASK).values()]
        messages += [args[1] for args in events.tasks(RUN_TASK).values()]
    first = [m for m in messages if len(m) == 20]
    handed = [m for m in messages if len(m) < 20]
    assert len(first) == 2, messages
    assert handed and all(len(m) <= 3 for m in handed), handed
    handed_pages = sorted(p for m in handed for p in m)
    assert len(handed_pages) == len(set(handed_pages)), "a page was handed back twice"
    assert len(handed_pages) >= 30, handed_pages
    assert any(len(m) > 1 for m in handed), "handed back as single pages only"
    assert_exactly_once(tmp_path / "out", range(1, 41))
