"""The Python API (harvester.Harvester) against a private redis-server, real Celery
worker processes and the demo API: what a scheduler task calls."""

from __future__ import annotations

import gzip
import json

import pytest

from harvester import Harvester, Job, JobStatus
from harvester.errors import (HarvesterError, JobNotFound, JobSpecError, JobStateError,
                              OutputError, OutputNotSealed, WaitTimeout)


@pytest.fixture
def harvester(redis_server, workers):
    workers.start()
    with Harvester(redis_server.url) as client:
        yield client


def _shard_lines(out) -> list[bytes]:
    lines = []
    for shard in sorted(out.glob("part-*.jsonl.gz")):
        lines += gzip.decompress(shard.read_bytes()).splitlines()
    return lines


def test_submit_wait_and_read_records_and_pages(api, job_file, harvester, tmp_path):
    """A job loaded from TOML is submitted, waited for with a progress callback that sees
    the count rise to the total and ends on the final status, and its records and pages
    read back lazily equal the shards' lines, in page order; the same job given as a
    dict validates the same way."""
    job = Job.from_toml(job_file(url=f"{api.url}/items", params={"per_page": 3, "pages": 60},
                                 pagination='style = "page"\npages = 60\nrecords_path = "data"'),
                        base_dir=tmp_path)
    assert job.name == "test"
    job_id = harvester.submit(job)
    seen: list[JobStatus] = []
    status = harvester.wait(job_id, progress=seen.append, timeout=120)
    assert (status.state, status.ok, status.exit_code) == ("done", True, 0)
    assert (status.committed, status.failed, status.total, status.total_known) == (60, 0, 60, True)
    assert seen[-1] == status and all(not s.final for s in seen[:-1])
    counts = [s.committed for s in seen]
    assert counts == sorted(counts)
    assert status.requests >= 60 and status.output_dir == str(tmp_path / "out")

    lines = _shard_lines(tmp_path / "out")
    pages = list(harvester.pages(job_id))
    assert [json.loads(line) for line in lines] == pages
    assert [p["page"] for p in pages] == list(range(1, 61))
    records = list(harvester.records(job_id))  # pages mode: read out of each body's "data"
    assert records == [r for p in pages for r in p["body"]["data"]]
    assert [r["id"] for r in records] == list(range(1, 181))

    as_dict = Job.from_dict({"job": {"name": "again", "url": f"{api.url}/items",
                                     "params": {"per_page": 20}},
                             "pagination": {"style": "page", "pages": 2},
                             "output": {"dir": str(tmp_path / "out2"), "mode": "records",
                                        "records_path": "data"}})
    second = harvester.submit(as_dict)
    assert harvester.wait(second, timeout=60).ok
    assert [r["id"] for r in harvester.records(second)] == list(range(1, 41))
    with pytest.raises(OutputError, match="records mode"):
        harvester.pages(second)  # refused at once, not at the first page
    listed = {s.job_id: s for s in harvester.jobs()}  # one round trip for all of them
    assert listed[job_id] == harvester.status(job_id)
    assert listed[second] == harvester.status(second)


def test_failures_retry_and_the_errors_a_caller_catches(api, job_file, harvester, tmp_path):
    """Pages 7 and 13 fail for good: wait returns a final, not-ok status (exit code 1)
    with the failures listed; retry once the API recovers queues exactly those two and
    the job ends ok. Every misuse raises the project's own errors with their context."""
    api.set_faults([{"kind": "status", "status": 500, "paths": ["/items"], "pages": [7, 13]}])
    job_id = harvester.submit(Job.from_toml(job_file(
        url=f"{api.url}/items", params={"per_page": 5, "pages": 30},
        pagination='style = "page"\npages = 30'), base_dir=tmp_path))
    status = harvester.wait(job_id, timeout=120)
    assert (status.state, status.ok, status.exit_code, status.failed) == ("failed", False, 1, 2)
    assert [f["page"] for f in harvester.failures(job_id)] == [7, 13]
    assert status.retries >= 2  # each failed page was tried again before it failed
    with pytest.raises(JobStateError) as cancelled:
        harvester.cancel(job_id)
    assert cancelled.value.state == "failed"

    api.clear_faults()
    assert harvester.retry(job_id) == 2
    assert harvester.wait(job_id, timeout=120).ok
    assert sorted(p["page"] for p in harvester.pages(job_id)) == list(range(1, 31))
    with pytest.raises(OutputError, match="records_path"):
        harvester.records(job_id)  # pages mode, and the job never said where they are

    with pytest.raises(JobNotFound) as missing:
        harvester.status("no-such-job")
    assert missing.value.job_id == "no-such-job"
    with pytest.raises(JobSpecError) as bad:
        Job.from_dict({"job": {"name": "x", "url": f"{api.url}/items", "urll": 1},
                       "pagination": {"style": "page", "pages": 2}, "output": {"dir": "o"}})
    assert bad.value.key == "job.urll"
    with pytest.raises(JobSpecError) as bad_toml:
        Job.from_toml_text("[job\n", source="inline")
    assert bad_toml.value.path == "inline"
    assert all(issubclass(e, HarvesterError) for e in (WaitTimeout, OutputNotSealed))


def test_a_running_job_times_out_waiting_then_is_cancelled_and_readable(
        api, job_file, harvester, tmp_path):
    """wait(timeout=) raises WaitTimeout while the job runs (the job goes on); its output
    is not readable before it is final; cancel() stops it and seals what was committed,
    which records() then reads back, exactly those pages."""
    api.set_faults([{"kind": "slow", "paths": ["/items"], "delay": 0.05, "piece_bytes": 64}])
    job_id = harvester.submit(Job.from_toml(job_file(
        url=f"{api.url}/items", params={"per_page": 5, "pages": 400},
        pagination='style = "page"\npages = 400'), base_dir=tmp_path))
    with pytest.raises(WaitTimeout) as timed_out:
        harvester.wait(job_id, timeout=1.5)
    assert timed_out.value.state == "running" and timed_out.value.job_id == job_id
    with pytest.raises(OutputNotSealed):
        harvester.records(job_id)
    assert harvester.cancel(job_id) == "cancelled"
    status = harvester.status(job_id)
    assert status.state == "cancelled" and status.final and status.exit_code == 1
    pages = [p["page"] for p in harvester.pages(job_id)]
    assert len(pages) == status.committed and len(set(pages)) == len(pages)
