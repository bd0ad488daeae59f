"""Workers stopped with SIGTERM mid-page, and a disk that fills up mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from support.output import assert_exactly_once, failed_lines
from support.services import wait_for

from support.jobs import job_toml




def test_sigterm_hands_the_running_page_back_at_once(api, workers, redis_server, harvest,
                                                     tmp_path):
    """A worker stopped with SIGTERM while it drips a slow page: within 5 s the page's message
    is back in the queue (not waiting for a lease or the visibility timeout) and the worker
    has exited; a new worker then finishes the job exactly."""
    api.set_faults([{"kind": "slow", "paths": ["/items"], "pages": [2], "piece_bytes": 32,
                     "delay": 0.2}])
    workers.count = 1
    workers.start()
    job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                   params={"per_page": 5, "pages": 3}, pagination='style = "page"\npages = 3',
                   http="timeout_read = 5\npage_deadline = 120\nretries = 2")
    submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
    job_id = submitted.stdout.split()[1]
    client = redis_server.client()
    wait_for(lambda: client.hexists(f"hv:{{{job_id}}}:owner", 2), what="page 2 to start")
    time.sleep(0.5)
    queued = lambda: sum(client.llen(q) for q in client.keys("harvest*"))  # noqa: E731
    assert queued() == 0
    worker = workers.processes[0]
    stopped_at = time.monotonic()
    os.killpg(worker.pid, signal.SIGTERM)
    wait_for(lambda: queued() == 1, timeout=5, what="page 2 back in the queue")
    worker.wait(timeout=10)
    handed_back = time.monotonic() - stopped_at
    assert handed_back < 5
    api.clear_faults()
    workers.processes.clear()
    workers.start()
    wait_for(lambda: client.hget(f"hv:{{{job_id}}}:job", "state") == "done", timeout=60,
          what="the job to finish")
    assert_exactly_once(tmp_path / "out", range(1, 4))


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs, mounted for the test (needs root, as on the project's machines)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_mid_job(api, workers, redis_server, harvest, tmp_path, small_disk):
    """The disk fills up mid-job: pages that hit ENOSPC fail with "disk full" and leave no
    partial data (verify passes); once space is back the other pages go on, and
    `harvest retry` completes the job exactly."""
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 64 * 1024))  # room for a few pages only
    workers.start()
    out = small_disk / "out"
    job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                   params={"per_page": 100, "pages": 200},
                   pagination='style = "page"\npages = 200',
                   http="timeout_read = 5\npage_deadline = 30\nretries = 1\n"
                        "backoff_factor = 0.05\nbackoff_max = 0.1",
                   out=str(out), extra="compress_level = 1")
    process = harvest.popen("run", str(job), redis_url=redis_server.url)
    client = redis_server.client()
    wait_for(lambda: any(int(client.hget(k, "failed") or 0) >= 2 for k in client.keys("hv:*:job")),
          timeout=120, what="pages to fail with a full disk")
    filler.unlink()  # space is back
    assert process.wait(timeout=180) == 1, process.stderr.read()
    failed = failed_lines(out)
    assert failed and all(f["error_class"] == "StorageError" and "disk full" in f["message"]
                          for f in failed)
    ok_pages = [p for p in range(1, 201) if p not in {f["page"] for f in failed}]
    assert_exactly_once(out, ok_pages, per_page=100)
    incomplete = harvest("verify", str(out))
    assert incomplete.returncode == 1 and f"{len(failed)} failed, 0 pending" in incomplete.stderr
    job_id = process.stdout.read().split()[1]
    assert harvest("retry", job_id, redis_url=redis_server.url).returncode == 0
    assert_exactly_once(out, range(1, 201), per_page=100)
    assert harvest("verify", str(out)).returncode == 0
