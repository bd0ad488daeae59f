"""Hosts for real (issue 10): Redis, the API, the object store and the workers each on
a host of its own (a network namespace with its own address on a private bridge);
the workers share nothing but Redis and the store: each has a private spool and no
output dir. A host is lost, cut off for 60 s, or added mid-job; each job ends exact.
Skips with the reason where namespaces cannot be made (no root)."""

from __future__ import annotations

import os
import time

import psutil
import pytest

from support.demo import start_demo_api
from support.output import assert_exactly_once
from support.netns import Network, namespaces_available
from support.s3 import S3Server, download
from support.services import RedisServer, Workers, committed_pages, wait_for

REASON = namespaces_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
BUCKET = "harvest-hosts"
PASSWORD = "hosts-redis-password"


class Cluster:
    """The hosts and their services; ``workers(name)`` starts a worker on host ``name``."""

    def __init__(self, net: Network, root):
        self.net = net
        self.root = root
        self.redis_host, self.api_host, self.store_host = (
            net.host("redis"), net.host("api"), net.host("store"))
        self.redis = RedisServer(root / "redis", password=PASSWORD,
                                 host=self.redis_host.address,
                                 wrap=self.redis_host.prefix).start()
        self.store = S3Server(root / "store", host=self.store_host.address,
                              wrap=self.store_host.prefix).start()
        self.store.create_bucket(BUCKET)
        self.api = start_demo_api(latency_ms=20, host=self.api_host.address,
                                  wrap=self.api_host.prefix)
        self.pools: dict[str, Workers] = {}

    def env(self, name: str) -> dict[str, str]:
        return {**os.environ, **self.store.env, "HARVEST_HOME": str(self.root / name / "home"),
                "HARVEST_SPOOL_DIR": str(self.root / name / "spool"),
                "HARVEST_LOG_LEVEL": "WARNING", "HARVEST_REDIS_URL": self.redis.url,
                "HARVEST_PART_BYTES": str(200_000)}

    def workers(self, name: str, *, threads: int = 4) -> Workers:
        host = self.net.hosts.get(name) or self.net.host(name)
        pool = Workers(self.redis.url, self.env(name), self.root / name / "logs", count=1,
                       threads=threads, wrap=host.prefix).start()
        self.pools[name] = pool
        return pool

    def pids(self, name: str) -> set[int]:
        return set(self.net.hosts[name].pids())

    def stop(self) -> None:
        for pool in self.pools.values():
            pool.stop()
        self.api.stop()
        self.store.stop()
        self.redis.kill()


@pytest.fixture
def cluster(tmp_path):
    with Network() as net:
        hosts = Cluster(net, tmp_path)
        try:
            yield hosts
        finally:
            hosts.stop()


def _submit(cluster: Cluster, harvest, job_file, prefix: str, pages: int) -> str:
    job = job_file(name=prefix, url=f"{cluster.api.url}/items",
                   params={"per_page": 5, "pages": pages},
                   pagination=f'style = "page"\npages = {pages}', out=f"s3://{BUCKET}/{prefix}")
    harvest.env.update(cluster.store.env)
    submitted = harvest("run", str(job), "--detach", redis_url=cluster.redis.url)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.split()[1]


def _job(cluster: Cluster, job_id: str) -> dict[str, str]:
    return cluster.redis.client().hgetall(f"hv:{{{job_id}}}:job")


def _owned_by(cluster: Cluster, job_id: str, pids: set[int]) -> set[int]:
    owners = cluster.redis.client().hgetall(f"hv:{{{job_id}}}:owner")
    return {int(page) for page, owner in owners.items()
            if any(owner.endswith(f"-{pid}") for pid in pids)}


def _exact(cluster: Cluster, harvest, prefix: str, pages: int, tmp_path) -> None:
    out = download(cluster.store, BUCKET, prefix, tmp_path / f"copy-{prefix}")
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, range(1, pages + 1))
    verified = harvest("verify", f"s3://{BUCKET}/{prefix}")
    assert verified.returncode == 0, verified.stderr


def test_a_worker_host_lost_mid_job_its_pages_come_back_on_the_others(
        cluster, harvest, job_file, tmp_path):
    """Two worker hosts; mid-job every process of one is SIGKILLed and its link taken
    down, while it holds pages. Its pages come back on the other host (within a lease
    and a reaper pass) and the job ends done, every page exactly once."""
    cluster.workers("w1")
    cluster.workers("w2")
    job_id = _submit(cluster, harvest, job_file, "lost", 800)
    wait_for(lambda: int(_job(cluster, job_id).get("committed", 0)) > 100, timeout=90,
             what="pages to commit on both hosts")
    held: set[int] = set()

    def holding() -> bool:
        held.update(_owned_by(cluster, job_id, cluster.pids("w1")))
        return bool(held)

    wait_for(holding, timeout=30, interval=0.02, what="the host to hold pages")
    cluster.net.hosts["w1"].kill()
    cluster.net.hosts["w1"].cut()
    lost_at = time.monotonic()
    wait_for(lambda: held <= committed_pages(cluster.redis.client(), job_id), timeout=120,
             what="the lost host's pages to be committed on the other")
    back = time.monotonic() - lost_at
    wait_for(lambda: _job(cluster, job_id).get("state") == "done", timeout=240,
             what="the job to end on the surviving host")
    print(f"\nhost lost while holding {len(held)} pages: all committed again {back:.1f} s"
          f" later; job done {time.monotonic() - lost_at:.1f} s after the loss")
    _exact(cluster, harvest, "lost", 800, tmp_path)


def test_a_worker_host_cut_off_for_60_s_doubles_and_loses_nothing(
        cluster, harvest, job_file, tmp_path):
    """A worker host's link goes down for 60 s mid-job (Redis, the API and the store out
    of its reach) while it holds pages, then comes back. The other host takes its pages
    once their leases run out; when it returns, what it still tries to commit is refused
    as a duplicate or a closed job. The output is exact and stays so after its return."""
    cluster.workers("w1")
    cluster.workers("w2")
    job_id = _submit(cluster, harvest, job_file, "cut", 1500)
    wait_for(lambda: int(_job(cluster, job_id).get("committed", 0)) > 100, timeout=90,
             what="pages to commit on both hosts")
    host = cluster.net.hosts["w1"]
    held: set[int] = set()

    def holding() -> bool:
        held.update(_owned_by(cluster, job_id, cluster.pids("w1")))
        return bool(held)

    wait_for(holding, timeout=30, interval=0.02, what="the host to hold pages")
    host.cut()
    cut_at = time.monotonic()
    wait_for(lambda: held <= committed_pages(cluster.redis.client(), job_id), timeout=60,
             what="the cut-off host's pages to be committed on the other")
    taken = time.monotonic() - cut_at
    time.sleep(max(0.0, 60 - (time.monotonic() - cut_at)))
    host.restore()
    wait_for(lambda: _job(cluster, job_id).get("state") == "done", timeout=240,
             what="the job to end")
    time.sleep(10)  # the returning host's late commits, if any, land now
    print(f"\nhost cut off for 60 s while holding {len(held)} pages: the other host had"
          f" committed them {taken:.1f} s after the cut")
    assert any(psutil.pid_exists(pid) for pid in cluster.pids("w1")), \
        "the cut-off host's worker survived the partition"
    _exact(cluster, harvest, "cut", 1500, tmp_path)


def test_a_worker_added_mid_job_takes_work_within_seconds(cluster, harvest, job_file,
                                                        tmp_path):
    """One small worker host runs a job; a second host joins mid-job and is running
    pages of it within 10 s of starting (its start-up included); the job ends exact."""
    cluster.workers("w1", threads=2)
    job_id = _submit(cluster, harvest, job_file, "added", 600)
    wait_for(lambda: int(_job(cluster, job_id).get("committed", 0)) > 30, timeout=90,
             what="the first host to commit pages")
    started = time.monotonic()
    cluster.workers("w3")
    wait_for(lambda: _owned_by(cluster, job_id, cluster.pids("w3")), timeout=10,
             interval=0.1, what="the new host to run pages of the job")
    print(f"\nnew host running pages {time.monotonic() - started:.1f} s after it started")
    wait_for(lambda: _job(cluster, job_id).get("state") == "done", timeout=240,
             what="the job to end")
    _exact(cluster, harvest, "added", 600, tmp_path)
