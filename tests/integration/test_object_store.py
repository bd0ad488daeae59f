"""Output to an S3-compatible object store (issue 10), on a real S3-protocol server
(moto's server mode over HTTP), real workers with no output dir of their own, a
private redis-server and the demo API."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from support.demo import start_demo_api
from support.output import assert_exactly_once
from support.s3 import CREDENTIALS, RefusingProxy, S3Server, download
from support.services import kill_tree, wait_for

BUCKET = "harvest-out"


@pytest.fixture
def s3(tmp_path):
    server = S3Server(tmp_path / "moto").start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3, workers, harvest, tmp_path):
    """Workers and the CLI see the store through the standard AWS environment; each
    worker spools in a directory of its own, and no output dir is shared."""
    for env in (workers.env, harvest.env):
        env.update(s3.env)
    workers.env["HARVEST_SPOOL_DIR"] = str(tmp_path / "spool")
    # Small parts, so that a job of a few MB is sealed into several.
    workers.env["HARVEST_PART_BYTES"] = str(20_000)
    return s3


def _objects(s3: S3Server, prefix: str) -> dict[str, bytes]:
    return {key[len(prefix) + 1:]: data for key, data in s3.objects(BUCKET, prefix).items()}


def test_a_job_to_s3_matches_the_same_job_to_a_local_dir_byte_for_byte(
        api, job_file, harvest, redis_server, workers, s3_env, tmp_path):
    """The demo job in records mode (records verbatim: no fetch times), once to a local
    dir and once to s3://bucket/prefix: the parts are byte-identical, the manifests
    agree but for the job id, times and location; `_SUCCESS` is there, no segment is
    left in the bucket, `harvest verify s3://...` passes, and the store's credentials
    are in no object and no log."""
    workers.start()
    common = dict(url=f"{api.url}/items", params={"per_page": 50, "pages": 120},
                  pagination='style = "page"\npages = 120',
                  extra='mode = "records"\nrecords_path = "data"')
    local = job_file(name="local", out=str(tmp_path / "local"), **common)
    remote = job_file(name="remote", out=f"s3://{BUCKET}/runs/remote", **common)
    for job in (local, remote):
        result = harvest("run", str(job), redis_url=redis_server.url, timeout=300)
        assert result.returncode == 0, result.stderr

    stored = _objects(s3_env, "runs/remote")
    parts = sorted(name for name in stored if name.startswith("part-"))
    local_parts = sorted(p.name for p in (tmp_path / "local").glob("part-*"))
    assert parts == local_parts and len(parts) > 1, (parts, local_parts)
    for name in parts:
        assert stored[name] == (tmp_path / "local" / name).read_bytes(), name
    assert "_SUCCESS" in stored and stored["_SUCCESS"] == b""
    assert not [name for name in stored if name.startswith(".segments")], \
        "sealed segments were removed"
    records = [json.loads(line) for name in parts
               for line in gzip.decompress(stored[name]).splitlines()]
    assert len(records) == 120 * 50
    ours, theirs = json.loads(stored["_manifest.json"]), json.loads(
        (tmp_path / "local" / "_manifest.json").read_text())
    assert [s["sha256"] for s in ours["shards"]] == [s["sha256"] for s in theirs["shards"]]
    assert ours["pages"] == theirs["pages"] and ours["state"] == "done"

    verified = harvest("verify", f"s3://{BUCKET}/runs/remote")
    assert verified.returncode == 0, verified.stderr
    secret = CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    assert all(secret.encode() not in data for data in stored.values())
    assert secret not in workers.logs()


def test_verify_of_an_s3_output_finds_a_damaged_part(api, job_file, harvest, redis_server,
                                                     workers, s3_env):
    """A part overwritten in the bucket after the job (one byte changed) fails
    `harvest verify s3://...` as damaged (exit 4, as for a local dir), naming the part."""
    workers.start()
    job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 30},
                   pagination='style = "page"\npages = 30', out=f"s3://{BUCKET}/damaged")
    assert harvest("run", str(job), redis_url=redis_server.url).returncode == 0
    client = s3_env.client()
    key = next(k for k in s3_env.objects(BUCKET, "damaged") if "/part-" in k)
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    result = harvest("verify", f"s3://{BUCKET}/damaged")
    assert result.returncode == 4, result.stderr
    assert f"{key.rsplit('/', 1)[1]}: " in result.stderr and "is damaged" in result.stderr


def test_an_s3_prefix_in_use_or_with_credentials_is_refused(api, job_file, harvest,
                                                           redis_server, s3_env):
    """A prefix that already holds objects is refused before anything is queued (exit 2,
    naming what is there); so is an s3:// URL carrying credentials, naming the
    environment variables to use instead; neither sends a request to the API."""
    s3_env.client().put_object(Bucket=BUCKET, Key="busy/notes.txt", Body=b"mine")
    job = job_file(url=f"{api.url}/items", out=f"s3://{BUCKET}/busy")
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 2, result.stderr
    assert "notes.txt" in result.stderr and "not empty" in result.stderr
    job = job_file(name="creds", url=f"{api.url}/items",
                   out=f"s3://AKIAEXAMPLE:secret@{BUCKET}/x")
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 2
    assert "AWS_SECRET_ACCESS_KEY" in result.stderr and "output.dir" in result.stderr
    assert "secret@" not in result.stderr


def _committed(redis_server, job_id: str) -> int:
    return int(redis_server.client().hget(f"hv:{{{job_id}}}:job", "committed") or 0)


def test_a_store_refusing_writes_for_30_s_makes_pages_wait_not_fail(
        job_file, harvest, redis_server, workers, s3, tmp_path):
    """Mid-job the store answers every request with 503 SlowDown for 30 s (a proxy in
    front of it). No page is committed while it refuses (a page is committed only once
    its bytes are in the store) and none fails: the workers wait and retry. Once the
    store is back the job ends done, every page exactly once, and verify passes."""
    proxy = RefusingProxy(s3.port).start()
    try:
        for env in (workers.env, harvest.env):
            env.update({**s3.env, "AWS_ENDPOINT_URL": proxy.url})
        workers.start()
        with start_demo_api(latency_ms=20) as api:
            job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 600},
                           pagination='style = "page"\npages = 600',
                           out=f"s3://{BUCKET}/outage")
            submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
            assert submitted.returncode == 0, submitted.stderr
            job_id = submitted.stdout.split()[1]
            wait_for(lambda: _committed(redis_server, job_id) > 50, timeout=60,
                     what="pages to commit before the outage")
            proxy.refusing.set()
            time.sleep(2)  # commits already past the store land
            frozen = _committed(redis_server, job_id)
            time.sleep(28)
            during = _committed(redis_server, job_id)
            refused = proxy.refused
            proxy.refusing.clear()
            client = redis_server.client()
            wait_for(lambda: client.hget(f"hv:{{{job_id}}}:job", "state") == "done",
                     timeout=180, what="the job to end after the outage")
        assert during == frozen, f"{during - frozen} pages committed while the store refused"
        assert refused > 0
        assert int(client.hget(f"hv:{{{job_id}}}:job", "failed")) == 0
        out = download(s3, BUCKET, "outage", tmp_path / "copy")
        assert (out / "_SUCCESS").exists()
        assert_exactly_once(out, range(1, 601))
        assert harvest("verify", f"s3://{BUCKET}/outage").returncode == 0
    finally:
        proxy.stop()


def test_a_worker_killed_mid_job_loses_nothing_in_the_store(job_file, harvest, redis_server,
                                                            workers, s3_env, tmp_path):
    """Two workers with private spools write to the store; one is SIGKILLed mid-job
    (its spooled, unuploaded pages die with it). Its pages come back on the other
    worker; the job ends with every page exactly once and verify passes."""
    workers.env["HARVEST_LEASE_SECONDS"] = "6"  # the lost pages come back sooner
    workers.start()
    with start_demo_api(latency_ms=30) as api:
        job = job_file(url=f"{api.url}/items", params={"per_page": 5, "pages": 400},
                       pagination='style = "page"\npages = 400', out=f"s3://{BUCKET}/killed")
        submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.split()[1]
        wait_for(lambda: _committed(redis_server, job_id) > 60, timeout=60,
                 what="pages to commit")
        kill_tree(workers.processes[0].pid)
        client = redis_server.client()
        wait_for(lambda: client.hget(f"hv:{{{job_id}}}:job", "state") == "done",
                 timeout=180, what="the job to end on the surviving worker")
    out = download(s3_env, BUCKET, "killed", tmp_path / "copy")
    assert_exactly_once(out, range(1, 401))
    assert harvest("verify", f"s3://{BUCKET}/killed").returncode == 0
