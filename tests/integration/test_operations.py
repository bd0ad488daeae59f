"""What operators do around a job, on real Redis, real workers and real HTTP servers:
retry with a fixed job file, stop a --local run by signal or kill it outright,
cancel a job no worker serves, forget a job, and meet an unexpected error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
from support.hostile import HostileServer, Request, respond
from support.output import assert_exactly_once, failed_lines, manifest
from support.services import REPO_ROOT, wait_for


def _job_id(stdout: str) -> str:
    return stdout.splitlines()[0].split()[1]




# ------------------------------------------------------------ retry --job

def test_retry_with_a_fixed_job_file_sends_the_new_token_and_refuses_request_changes(
        job_file, harvest, tmp_path):
    """A job whose token was wrong fails every page (401); `harvest retry JOB --job FIXED`
    with a new token commits them all, exactly once, while a fixed file that changes what
    a page requests (its params) is refused with exit 2 naming the key, and changes nothing."""
    server = HostileServer()

    def items(request: Request) -> bytes:
        if request.headers.get("authorization") != "Bearer new-token":
            return respond(401, {"error": "bad token"}, reason="Unauthorized")
        page = int(request.query["page"][0])
        return respond(200, {"meta": {"page": page}, "data": [{"id": page}]})

    server.route("/items", items)
    harvest.env.update({"OLD_TOKEN": "old-token", "NEW_TOKEN": "new-token"})
    with server:
        job = job_file(url=f"{server.url}/items", params={"per_page": 1},
                       headers={"Authorization": "Bearer ${OLD_TOKEN}"},
                       pagination='style = "page"\npages = 6')
        first = harvest("run", str(job), "--local")
        assert first.returncode == 1, first.stderr
        job_id = _job_id(first.stdout)
        out = tmp_path / "out"
        assert [f["status"] for f in failed_lines(out)] == [401] * 6

        changed = job_file(name="changed", url=f"{server.url}/items", params={"per_page": 2},
                           headers={"Authorization": "Bearer ${NEW_TOKEN}"},
                           pagination='style = "page"\npages = 6')
        refused = harvest("retry", job_id, "--local", "--job", str(changed))
        assert refused.returncode == 2, refused.stderr
        assert "job.params" in refused.stderr and job_id in refused.stderr

        fixed = job_file(name="fixed", url=f"{server.url}/items", params={"per_page": 1},
                         headers={"Authorization": "Bearer ${NEW_TOKEN}"},
                         pagination='style = "page"\npages = 6')
        retried = harvest("retry", job_id, "--local", "--job", str(fixed))
    assert retried.returncode == 0, retried.stderr
    assert (out / "_SUCCESS").exists()
    assert_exactly_once(out, range(1, 7), per_page=1)
    meta = manifest(out)
    assert meta["job"]["headers"] == {"Authorization": "Bearer ${NEW_TOKEN}"}
    assert "new-token" not in json.dumps(meta)


# ------------------------------------------------------------ --local lifecycle

def _slow_job(api, job_file, name: str, pages: int = 400):
    api.set_faults([{"kind": "stall", "seconds": 1, "after_bytes": 10, "paths": ["/items"]}])
    return job_file(name=name, out=f"out-{name}", url=f"{api.url}/items",
                    params={"per_page": 2, "pages": pages},
                    pagination=f'style = "page"\npages = {pages}')


def _tree(pid: int) -> list[psutil.Process]:
    wait_for(lambda: len(psutil.Process(pid).children(recursive=True)) >= 3, 60,
              "the local redis-server and workers")
    time.sleep(2)  # the workers' own pool children
    return psutil.Process(pid).children(recursive=True)


def _all_gone(processes: list[psutil.Process]) -> bool:
    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_sigterm_and_sighup_stop_a_local_run_and_everything_it_started(api, job_file,
                                                                       harvest, tmp_path):
    """`harvest run --local` ended by SIGTERM (a `timeout`) or SIGHUP (a closed terminal)
    cancels its job, seals what was committed and stops its redis-server and workers:
    nothing it started is left running."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        job = _slow_job(api, job_file, f"sig{int(sig)}")
        run = harvest.popen("run", str(job), "--local", "--workers", "2")
        children = _tree(run.pid)
        assert any("redis-server" in " ".join(p.cmdline()) for p in children)
        time.sleep(2)
        run.send_signal(sig)
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 130, stderr
        assert "Traceback" not in stderr
        wait_for(lambda: _all_gone(children), 30, "the cluster to stop")
        meta = manifest(tmp_path / f"out-sig{int(sig)}")
        assert meta["state"] == "cancelled"
    api.clear_faults()


def test_a_killed_local_run_leaves_nothing_running_and_its_job_waits_for_retry(
        api, job_file, harvest, tmp_path):
    """SIGKILL of `harvest run --local` takes its redis-server and workers with it (the
    kernel signals them); the next, unrelated --local run is not slowed by the orphaned
    job: it cancels it, seals its committed pages and never re-sends its failed page.
    `harvest retry ORPHAN --local` then finishes it."""
    job = _slow_job(api, job_file, "orphan", pages=200)
    api.set_faults([{"kind": "status", "status": 500, "paths": ["/items"], "pages": [3]},
                    {"kind": "stall", "seconds": 1, "after_bytes": 10, "paths": ["/items"]}])
    run = harvest.popen("run", str(job), "--local", "--workers", "2")
    orphan = _job_id(run.stdout.readline())
    children = _tree(run.pid)
    wait_for(lambda: api.stats()["by_page"].get("/items:3", 0) >= 3, 60,
              "page 3 to fail for good")
    run.kill()
    run.wait()
    wait_for(lambda: _all_gone(children), 30, "the orphaned cluster to stop by itself")

    api.clear_faults()
    tries_of_page_3 = api.stats()["by_page"]["/items:3"]
    other = job_file(name="other", out="out-other", url=f"{api.url}/offset",
                     params={"total": 50}, pagination='style = "offset"\nlimit = 5\ntotal = 50')
    second = harvest("run", str(other), "--local", timeout=180)
    assert second.returncode == 0, second.stderr
    assert f"job {orphan}" in second.stderr and f"harvest retry {orphan} --local" in \
        second.stderr
    assert api.stats()["by_page"]["/items:3"] == tries_of_page_3, \
        "the orphan's failed page was never re-sent"
    status = harvest("status", orphan, "--json", "--local")
    assert json.loads(status.stdout)["state"] == "cancelled"

    retried = harvest("retry", orphan, "--local", timeout=300)
    assert retried.returncode == 0, retried.stderr
    assert_exactly_once(tmp_path / "out-orphan", range(1, 201), per_page=2)


def test_cancel_of_a_job_no_worker_serves_is_sealed_by_the_command(
        api, job_file, harvest, redis_server, tmp_path):
    """`harvest cancel` of a job whose pages no worker ever ran does not hang in
    'finalizing': with no worker to seal it, the command seals it and exits 0."""
    job = job_file(url=f"{api.url}/items", params={"per_page": 2, "pages": 10},
                   pagination='style = "page"\npages = 10')
    submitted = harvest("run", str(job), "--detach", redis_url=redis_server.url)
    job_id = _job_id(submitted.stdout)
    cancelled = harvest("cancel", job_id, redis_url=redis_server.url, timeout=60)
    assert cancelled.returncode == 0, cancelled.stderr
    status = json.loads(harvest("status", job_id, "--json", redis_url=redis_server.url).stdout)
    assert status["state"] == "cancelled"
    assert manifest(tmp_path / "out")["pages"]["pending"] == 10


def test_finished_jobs_expire_and_forget_drops_them_now(api, job_file, harvest, redis_server,
                                                        workers, tmp_path):
    """Every Redis key of a final job gets the configured time to live
    (HARVEST_KEEP_DAYS); `harvest forget` removes them all at once and refuses a job
    still running. Nothing of the output dir is touched."""
    workers.env["HARVEST_KEEP_DAYS"] = "0.5"  # the finalizer (a worker) sets the TTLs
    workers.start()
    job = job_file(url=f"{api.url}/items", params={"per_page": 2, "pages": 300},
                   pagination='style = "page"\npages = 300')
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 0, result.stderr
    job_id = _job_id(result.stdout)
    client = redis_server.client()
    keys = list(client.scan_iter(f"hv:{{{job_id}}}*"))
    assert len(keys) > 3
    ttls = {key: client.ttl(key) for key in keys}
    assert all(0 < ttl <= 43200 for ttl in ttls.values()), ttls

    running = harvest("run", str(job_file(name="second", out="out2", url=f"{api.url}/items",
                                          params={"per_page": 2, "pages": 3000},
                                          pagination='style = "page"\npages = 3000')),
                      "--detach", redis_url=redis_server.url)
    refused = harvest("forget", _job_id(running.stdout), redis_url=redis_server.url)
    assert refused.returncode == 4 and "cancel it first" in refused.stderr

    assert harvest("forget", job_id, redis_url=redis_server.url).returncode == 0
    assert list(client.scan_iter(f"hv:{{{job_id}}}*")) == []
    assert job_id not in client.zrange("hv:jobs", 0, -1)
    assert (tmp_path / "out" / "_SUCCESS").exists()


# ------------------------------------------------------------ unexpected errors

def _cli(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HARVEST_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)


def test_an_unexpected_error_is_one_line_exit_4_and_a_crash_log(tmp_path):
    """A bug inside a command prints one line naming the error and a crash log file
    holding the traceback; never a raw traceback, never exit 1."""
    result = _cli("import sys, harvester.terminal.commands as c\n"
                  "def boom(args): raise KeyError('surprise')\n"
                  "c.cmd_status = boom\n"
                  "from harvester.cli import main\n"
                  "sys.exit(main(['status', 'x']))", tmp_path)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "unexpected KeyError" in result.stderr
    logs = list((tmp_path / "home" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text()
    assert str(logs[0]) in result.stderr


def test_a_missing_dependency_is_one_line_exit_4(tmp_path):
    """A broken install (a dependency that does not import) ends with one line saying to
    reinstall, exit 4: the command imports its dependencies only inside the error net."""
    result = _cli("import sys\n"
                  "sys.modules['structlog'] = None\n"
                  "from harvester.cli import main\n"
                  "sys.exit(main(['status', 'x']))", tmp_path)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert "install is broken" in result.stderr and "structlog" in result.stderr
