"""`harvest serve` over real HTTP, against a private redis-server, real Celery workers
and the demo API: jobs submitted as TOML or JSON, progress followed as Server-Sent
Events to the end, the output streamed back byte for byte."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time

import requests

from support.service import rss
from support.services import HARVEST


def _job_toml(api, out, *, pages: int, extra_pagination: str = "", output: str = "") -> str:
    return (f'[job]\nname = "svc"\nurl = "{api.url}/items"\nparams = {{ per_page = 4 }}\n'
            f'[pagination]\nstyle = "page"\npages = {pages}\n{extra_pagination}'
            f'[http]\nretries = 1\nbackoff_factor = 0.05\nbackoff_max = 0.1\n'
            f'[output]\ndir = "{out}"\n{output}')


def _parts(out) -> list:
    return sorted(out.glob("part-*.jsonl.gz"))


def test_every_route_but_healthz_needs_the_token_and_jobs_are_validated(service, api, tmp_path):
    """/healthz answers anyone; every other route (the API docs included) is 401 without
    the token or with a wrong one; a malformed job is 422 naming the key, whether sent
    as TOML or JSON; an unknown job is 404."""
    assert requests.get(f"{service.url}/healthz", timeout=5).json() == {"ok": True}
    for path in ("/jobs", "/docs", "/openapi.json", "/metrics", "/", "/jobs/x/events"):
        assert requests.get(service.url + path, timeout=5).status_code == 401, path
        wrong = requests.get(service.url + path, timeout=5,
                             headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401, path
    assert requests.post(f"{service.url}/jobs", data="x", timeout=5).status_code == 401
    assert service.get("/docs").status_code == 200
    assert "/jobs/{job_id}/events" in service.get("/openapi.json").json()["paths"]

    toml = _job_toml(api, tmp_path / "o1", pages=2).replace("[http]", "[http]\ntimeout = 3")
    bad = service.post("/jobs", data=toml, headers={"Content-Type": "application/toml"})
    assert bad.status_code == 422 and bad.json()["key"] == "http.timeout", bad.text
    as_json = {"job": {"name": "svc", "url": f"{api.url}/items"},
               "pagination": {"style": "page", "pages": "two"},
               "output": {"dir": str(tmp_path / "o2")}}
    bad = service.post("/jobs", json=as_json)
    assert bad.status_code == 422 and bad.json()["key"] == "pagination.pages", bad.text
    assert service.post("/jobs", data="[job\n").status_code == 422
    assert service.get("/jobs/no-such-job").status_code == 404
    assert service.get("/jobs/no-such-job/events").status_code == 404


def test_serve_refuses_to_start_without_a_token(env, tmp_path):
    """No HARVEST_API_TOKEN (or a short one): `harvest serve` exits 2 saying what to set."""
    environment = {k: v for k, v in env.items() if k != "HARVEST_API_TOKEN"}
    result = subprocess.run([*HARVEST, "serve", "--port", "9"], env=environment,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "HARVEST_API_TOKEN" in result.stderr


def test_submit_follow_events_to_the_end_and_download_byte_for_byte(service, api, tmp_path):
    """A TOML job POSTed is followed over SSE to its end (progress rising to the total,
    ids '<ms>.<state>', a final 'end'); /records sends exactly the shards' bytes, as
    stored with Content-Encoding gzip when accepted and decompressed otherwise; a stream
    resumed with Last-Event-ID after the job ended reports the state change it missed."""
    out = tmp_path / "out"
    created = service.post("/jobs", data=_job_toml(api, out, pages=80,
                           output='mode = "records"\nrecords_path = "data"\n'))
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    events = service.events(job_id)
    progress = [e for e in events if e.event == "progress"]
    assert events[-1].event == "end" and events[-1].data == {"state": "done"}
    done = [p.data["committed"] for p in progress]
    assert done == sorted(done) and done[-1] == 80
    assert progress[-1].data["total"] == 80 and progress[-1].data["final"]
    assert all(e.id and e.id.split(".")[0].isdigit() for e in events)
    assert events[-1].id.endswith(".done")

    stored = b"".join(part.read_bytes() for part in _parts(out))
    with service.get(f"/jobs/{job_id}/records", stream=True,
                     headers={"Accept-Encoding": "gzip"}) as response:
        assert response.headers["content-encoding"] == "gzip"
        assert response.raw.read(decode_content=False) == stored
    plain = service.get(f"/jobs/{job_id}/records", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == gzip.decompress(stored)
    assert [json.loads(line)["id"] for line in plain.content.splitlines()] == \
        list(range(1, 321))
    assert service.get(f"/jobs/{job_id}/pages").status_code == 409  # records mode
    assert service.get(f"/jobs/{job_id}/failed").json() == []

    resumed = service.events(job_id, last_event_id=f"{int(time.time() * 1000) - 60000}.running")
    assert [e.event for e in resumed] == ["state", "progress", "end"]
    assert resumed[0].data == {"state": "done", "previous": "running"}

    metrics = service.get("/metrics").text
    assert f'harvest_pages_committed_total{{job_id="{job_id}"}} 80.0' in metrics
    assert f'harvest_job_state{{job_id="{job_id}",state="done"}} 1.0' in metrics
    assert f'harvest_requests_total{{job_id="{job_id}"}}' in metrics
    listed = service.get("/jobs").json()
    assert job_id in [job["job_id"] for job in listed]


def test_failed_pages_listed_then_retried_over_http(service, api, tmp_path):
    """Pages 3 and 5 keep failing: the stream ends 'failed', /failed lists both with
    their reasons, /records of the pages-mode job reads records out of the pages; once
    the API recovers, POST retry queues exactly two pages and the job ends done. A
    finished job cannot be cancelled (409, naming its state)."""
    api.set_faults([{"kind": "status", "status": 500, "paths": ["/items"], "pages": [3, 5]}])
    created = service.post("/jobs", json={
        "job": {"name": "svc", "url": f"{api.url}/items", "params": {"per_page": 4}},
        "pagination": {"style": "page", "pages": 12, "records_path": "data"},
        "http": {"retries": 1, "backoff_factor": 0.05, "backoff_max": 0.1},
        "output": {"dir": str(tmp_path / "out")}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert service.events(job_id)[-1].data == {"state": "failed"}
    failed = service.get(f"/jobs/{job_id}/failed").json()
    assert [(f["page"], f["status"]) for f in failed] == [(3, 500), (5, 500)]
    records = service.get(f"/jobs/{job_id}/records").content.splitlines()
    assert len(records) == 10 * 4  # the 10 committed pages' records

    api.clear_faults()
    assert service.post(f"/jobs/{job_id}/retry").json()["queued"] == 2
    assert service.events(job_id)[-1].data == {"state": "done"}
    assert sorted(json.loads(line)["page"]
                  for line in service.get(f"/jobs/{job_id}/pages").content.splitlines()) == \
        list(range(1, 13))
    refused = service.post(f"/jobs/{job_id}/cancel")
    assert refused.status_code == 409 and refused.json()["state"] == "done"


def test_a_gigabyte_streams_in_constant_memory_and_a_dropped_client_costs_nothing(
        service, api, tmp_path):
    """A 1 GiB records-mode output streams through /records (decompressed, 1 GiB on the
    wire) while the server stays under 100 MB RSS; a client that hangs up after 20 MB
    leaves the server answering, its memory where it was, and the job as it was."""
    out = tmp_path / "out"
    # 64 pages of 16 MiB (records mode splits bodies record by record: pages run in
    # parallel on every worker thread, where one 1 GiB page would take one).
    toml = (f'[job]\nname = "big"\nurl = "{api.url}/big"\nparams = {{ bytes = {16 << 20} }}\n'
            f'[pagination]\nstyle = "page"\npages = 64\n[http]\npage_deadline = 600\n'
            f'[output]\ndir = "{out}"\nmode = "records"\nrecords_path = "data"\n')
    started = time.monotonic()
    job_id = service.post("/jobs", data=toml).json()["job_id"]
    assert service.events(job_id, timeout=600)[-1].data == {"state": "done"}
    print(f"harvested in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    raw_bytes = service.get(f"/jobs/{job_id}").json()["raw_bytes"]
    assert raw_bytes > 1_000_000_000  # records without their page frames: ~1 GiB

    peak = [rss(service.process.pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak.append(rss(service.process.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    received = 0
    with service.get(f"/jobs/{job_id}/records", stream=True, timeout=600,
                     headers={"Accept-Encoding": "identity"}) as response:
        for chunk in response.iter_content(chunk_size=1 << 20):
            received += len(chunk)
    stop.set()
    sampler.join()
    print(f"streamed {received / 2**20:.0f} MiB, server RSS peak {max(peak) / 2**20:.1f} MB")
    assert received == raw_bytes
    assert max(peak) < 100 * 2**20, f"server peaked at {max(peak) / 2**20:.0f} MB"

    before = rss(service.process.pid)
    with service.get(f"/jobs/{job_id}/records", stream=True,
                     headers={"Accept-Encoding": "identity"}) as response:
        taken = 0
        for chunk in response.iter_content(chunk_size=1 << 20):
            taken += len(chunk)
            if taken >= 20 << 20:
                break  # the client hangs up mid-stream
    time.sleep(1)
    assert service.get("/healthz").json() == {"ok": True}
    assert service.get(f"/jobs/{job_id}").json()["state"] == "done"
    assert rss(service.process.pid) < before + 30 * 2**20


def test_the_event_stream_says_when_retry_after_pauses_the_job(service, api, tmp_path):
    """A 503 with Retry-After: 3 on one page pauses the whole job: the stream's progress
    events say paused (with when it ends) while it holds, and not after; the job ends done."""
    api.set_faults([{"kind": "status", "status": 503, "retry_after": "3", "paths": ["/items"],
                     "pages": [2], "times": 1}])
    job_id = service.post("/jobs", data=_job_toml(api, tmp_path / "out", pages=6)).json()["job_id"]
    events = service.events(job_id)
    progress = [e.data for e in events if e.event == "progress"]
    paused = [p for p in progress if p["paused"]]
    assert paused, [(p["committed"], p["paused"]) for p in progress]
    assert all(p["paused_until"] > p["created_at"] for p in paused)
    assert not progress[-1]["paused"] and events[-1].data == {"state": "done"}
