"""A hostile API, played by a raw-socket server, against real Redis and real workers.

Each test here pins one defence of issue 7 and failed on the code before it:
credentials never leave the job's origin (a trap on 127.0.0.2 sees no
connection), echoed secrets are stored and logged nowhere, a value too large
to read never ends a chain early, absurd totals fail page 1, and ledger walks
cost what was committed.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from support.hostile import HostileServer, Request, Trap, paired, respond
from support.jobs import job_toml
from support.output import failed_lines, manifest
from support.services import HARVEST, RedisServer, Workers

HTTP = "timeout_connect = 2\ntimeout_read = 5\npage_deadline = 20\nretries = 1\n" \
       "backoff_factor = 0.05\nbackoff_max = 0.1"
TOKEN = "hv-T0k/9+Zq=tail"
KEY = "hv-K3y/a+b=c d"
UNICODE = "t\u00f6k\u20acn-hv-Un1c0de"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Redis (AOF, fsync always) and two workers that hold the job's secrets."""
    root = tmp_path_factory.mktemp("hostile")
    server = RedisServer(root / "redis").start()
    env = {**os.environ, "HARVEST_HOME": str(root / "home"), "HARVEST_LOG_LEVEL": "WARNING",
           "HOSTILE_TOKEN": TOKEN, "HOSTILE_KEY": KEY, "HOSTILE_UNICODE": UNICODE}
    workers = Workers(server.url, env, root / "logs", count=2, threads=4).start()
    yield server, workers
    workers.stop()
    server.kill()


def _job(path: Path, *, url: str, pagination: str, out: str, params: dict | None = None,
         headers: dict | None = None) -> Path:
    return job_toml(path, url=url, params=params or {}, pagination=pagination, http=HTTP,
                    headers=headers, out=out, name="hostile")


def _run_all(harvest, redis_url: str, jobs: list[Path]) -> list[subprocess.CompletedProcess]:
    """``harvest run`` of every job at once; their results in order."""
    env = {**harvest.env, "HARVEST_REDIS_URL": redis_url}
    running = [subprocess.Popen([*HARVEST, "run", str(job)], env=env, cwd=harvest.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for job in jobs]
    results = []
    for process in running:
        out, err = process.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results




# ------------------------------------------------------------------ item 1

TRICKS = {
    "backslash": "{trap}\\@{home}/steal",
    "userinfo": "http://{home_host}@{trap_host}/steal",
    "percent-encoded host": "http://127.0.0.%32:{port}/steal",
    "ipv6 zone": "http://[::1%25lo]:{port}/steal",
    "trailing dot": "http://127.0.0.2.:{port}/steal",
    "decimal ip": "http://2130706434:{port}/steal",
    "scheme-relative": "//127.0.0.2:{port}/steal",
    "bad ipv6": "http://[::1/steal",
    "port out of range": "http://127.0.0.2:99999/steal",
}


def _trick(name: str, home: HostileServer, trap: Trap) -> str:
    return TRICKS[name].format(trap=trap.url, home=home.url, port=home.port,
                               home_host=f"127.0.0.1:{home.port}",
                               trap_host=f"127.0.0.2:{home.port}")


def test_no_url_trick_sends_a_request_to_another_host(cluster, harvest, tmp_path):
    """Every URL trick, as a next URL, a Link target and a redirect: the page it leads to
    fails naming the reason, the job ends (exit 1, never hung, never _SUCCESS), and the
    listener on 127.0.0.2 receives no connection at all. A mixed-case scheme and host on
    the job's own origin is followed."""
    server, workers = cluster
    home, trap = paired()
    with home, trap:
        jobs, expected = [], {}
        for index, name in enumerate(TRICKS):
            target = _trick(name, home, trap)
            for vector in ("next_url", "link", "redirect"):
                path = f"/{vector}/{index}"
                if vector == "next_url":
                    home.route(path, lambda r, t=target: respond(200, {"data": [1], "next": t}))
                    pagination = 'style = "next_url"\nnext_url_path = "next"'
                elif vector == "link":
                    home.route(path, lambda r, t=target: respond(
                        200, {"data": [1]}, headers={"Link": f'<{t}>; rel="next"'}))
                    pagination = 'style = "link"'
                else:
                    home.route(path, lambda r, t=target: respond(
                        302, {}, reason="Found", headers={"Location": t}))
                    pagination = 'style = "page"\npages = 1'
                out = f"out-{vector}-{index}"
                jobs.append(_job(tmp_path / f"{vector}-{index}.toml", url=home.url + path,
                                 pagination=pagination, out=out,
                                 headers={"Authorization": "Bearer ${HOSTILE_TOKEN}"}))
                expected[out] = (name, vector)
        same = f"HTTP://127.0.0.1:{home.port}/same/2"
        home.route("/same/1", lambda r: respond(200, {"data": [1], "next": same}))
        home.route("/same/2", lambda r: respond(200, {"data": [2], "next": None}))
        jobs.append(_job(tmp_path / "same.toml", url=home.url + "/same/1", out="out-same",
                         pagination='style = "next_url"\nnext_url_path = "next"'))

        results = _run_all(harvest, server.url, jobs)

        assert trap.connections == [], f"a request reached 127.0.0.2: {trap.connections}"
        for job, result in zip(jobs[:-1], results[:-1]):
            out = tmp_path / Path(job).read_text().split('dir = "')[1].split('"')[0]
            name, vector = expected[out.name]
            assert result.returncode == 1, (name, vector, result.stderr, workers.logs()[-3000:])
            assert not (out / "_SUCCESS").exists()
            failed = failed_lines(out)
            assert len(failed) == 1, (name, vector, failed)
            assert failed[0]["error_class"] in ("UnsafeURL", "ForeignOrigin"), (name, failed)
            assert TOKEN not in json.dumps(failed)
        assert results[-1].returncode == 0, results[-1].stderr
        assert [r.path for r in home.requests if r.path.startswith("/same")] == \
            ["/same/1", "/same/2"]


# ------------------------------------------------------------------ item 2

def _forms(secret: str) -> list[str]:
    """Every spelling of a secret that must not be stored or logged."""
    pct = quote(secret, safe="")
    return sorted({secret, pct, pct.lower(), quote_plus(secret), quote_plus(secret).lower(),
                   base64.b64encode(secret.encode()).decode(),
                   json.dumps(secret)[1:-1], repr(secret)[1:-1]}, key=len)


def _redis_dump(server: RedisServer) -> str:
    """Every key and value in Redis, as text."""
    client = server.client()
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        else:
            value = kind
        parts.append(f"{key} {value!r}")
    return "\n".join(parts)


def _aof_bytes(server: RedisServer) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(server.data_dir.rglob("*")) if p.is_file()
                    and p.name != "redis.log")


def test_secrets_the_api_echoes_are_stored_and_logged_nowhere(cluster, harvest, tmp_path):
    """The API echoes the token and key it was sent: in the status line's reason phrase,
    inside an invalid body's error snippet, as a total, as a cursor that then loops, and
    (percent-encoded, lower-case hex) in a next URL; a third secret is not Latin-1 and
    cannot go in a header. None of them, in any spelling, is in _failed.jsonl, the
    manifest, the worker logs, any Redis key or the Redis AOF. The echoed next URL is
    still requested as the API sent it (urllib3 upper-cases percent escapes)."""
    server, workers = cluster
    home = HostileServer()
    auth = {"Authorization": "Bearer ${HOSTILE_TOKEN}"}
    params = {"key": "${HOSTILE_KEY}"}

    def echo(request: Request) -> str:
        return f"{request.headers.get('authorization')} key={request.query.get('key', [''])[0]}"

    home.route("/reason", lambda r: respond(500, {}, reason=f"denied for {echo(r)}"))
    home.route("/snippet", lambda r: respond(200, raw_body=f'{{"data": [1, {echo(r)}'.encode()))
    home.route("/total", lambda r: respond(200, {"meta": {"total": echo(r)}, "data": []}))

    def cursor(request: Request) -> bytes:
        sent = request.query.get("cursor", [None])[0]
        if sent is None:
            return respond(200, {"data": [1], "next": f"c-{request.query['key'][0]}"})
        if sent != f"c-{KEY}":
            return respond(400, {"error": "bad cursor"}, reason="Bad Request")
        return respond(200, {"data": [2], "next": sent})  # the same cursor again: a loop

    home.route("/cursor", cursor)
    # Percent-encoded with lower-case hex digits, as some APIs do.
    raw_key = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(KEY, safe=""))
    home.route("/next", lambda r: respond(200, {"data": [1],
                                                "next": f"/next2?key={raw_key}&x=1"}))
    home.route("/next2", lambda r: respond(200, {"data": [2], "next": None})
               if r.query == {"key": [KEY], "x": ["1"]}
               else respond(400, {"error": r.target}, reason="Bad Request"))
    home.route("/unicode", lambda r: respond(200, {"data": []}))
    with home:
        specs = {
            "reason": ("/reason", 'style = "page"\npages = 1', auth),
            "snippet": ("/snippet", 'style = "page"\npages = 1', auth),
            "total": ("/total", 'style = "page"\ntotal_pages_path = "meta.total"', auth),
            "cursor": ("/cursor", 'style = "cursor"\ncursor_path = "next"', auth),
            "next": ("/next", 'style = "next_url"\nnext_url_path = "next"', auth),
            "unicode": ("/unicode", 'style = "page"\npages = 1', {"X-Key": "${HOSTILE_UNICODE}"}),
        }
        jobs = [_job(tmp_path / f"{name}.toml", url=home.url + path, pagination=pagination,
                     out=f"out-{name}", params=params, headers=headers)
                for name, (path, pagination, headers) in specs.items()]
        results = dict(zip(specs, _run_all(harvest, server.url, jobs)))

        assert results["next"].returncode == 0, results["next"].stderr + workers.logs()[-2000:]
        # As sent, but for the case of its percent escapes (urllib3 upper-cases them).
        assert [r.target for r in home.requests if r.path == "/next2"] == \
            [f"/next2?key={quote(KEY, safe='')}&x=1"]
        for name in ("reason", "snippet", "total", "cursor", "unicode"):
            assert results[name].returncode == 1, (name, results[name].stderr)
        messages = {name: failed_lines(tmp_path / f"out-{name}") for name in specs}
        assert "HTTP 500 denied for Bearer ***" in messages["reason"][0]["message"]
        assert messages["unicode"][0]["error_class"] == "BadSecretValue"
        assert not [r for r in home.requests if r.path == "/unicode"], "nothing was sent"
        assert "looping" in messages["cursor"][0]["message"]
        assert "${HOSTILE_KEY}" in messages["cursor"][0]["message"]

        time.sleep(1.5)  # the AOF is fsync'ed on every write; give the log a moment
        stored = {
            "failed": "".join((tmp_path / f"out-{n}" / "_failed.jsonl").read_text()
                              for n in specs if (tmp_path / f"out-{n}" / "_failed.jsonl").exists()),
            "manifests": "".join(json.dumps(manifest(tmp_path / f"out-{n}")) for n in specs),
            "worker logs": workers.logs(),
            "cli output": "".join(r.stdout + r.stderr for r in results.values()),
            "redis keys": _redis_dump(server),
        }
        aof = _aof_bytes(server)
        for secret in (TOKEN, KEY, UNICODE):
            for form in _forms(secret):
                for where, text in stored.items():
                    assert form not in text, f"{secret!r} spelt {form!r} found in {where}"
                assert form.encode() not in aof, f"{secret!r} spelt {form!r} in the AOF"


# ------------------------------------------------------------------ item 3

def test_a_value_too_large_to_read_fails_the_page_instead_of_ending_the_chain(
        cluster, harvest, tmp_path):
    """A 65 KB next URL and a 70 KB cursor used to read as "no next": exit 0, _SUCCESS,
    data missing. Now the page fails with the reason and the job exits 1."""
    server, workers = cluster
    home = HostileServer()
    with home:
        long_url = f"{home.url}/more?" + "a" * 66_000
        home.route("/long-next", lambda r: respond(200, {"data": [1], "next": long_url}))
        home.route("/long-cursor", lambda r: respond(200, {"data": [1], "c": "x" * 70_000}))
        jobs = [_job(tmp_path / "next.toml", url=home.url + "/long-next", out="out-next",
                     pagination='style = "next_url"\nnext_url_path = "next"'),
                _job(tmp_path / "cursor.toml", url=home.url + "/long-cursor", out="out-cursor",
                     pagination='style = "cursor"\ncursor_path = "c"')]
        results = _run_all(harvest, server.url, jobs)
    for name, result in zip(("next", "cursor"), results):
        out = tmp_path / f"out-{name}"
        assert result.returncode == 1, result.stderr
        assert not (out / "_SUCCESS").exists()
        failed = failed_lines(out)
        assert [f["page"] for f in failed] == [1]
        assert "cannot be read" in failed[0]["message"] and "KiB" in failed[0]["message"]


# ------------------------------------------------------------------ item 4

@pytest.mark.parametrize("total", ["1e20", "1000000000000", "1e999999999"])
def test_an_absurd_total_fails_page_1_with_the_reason(total, cluster, harvest, tmp_path):
    """total_pages = 10^20 used to crash `harvest run` (int('1e+20')) and leave the job
    running; 10^12 made the finalizer walk 7.8 billion buckets. Now page 1 fails with
    the reason, the manifest is written, and the job ends with exit 1."""
    server, workers = cluster
    home = HostileServer()
    with home:
        home.route("/t", lambda r: respond(200, raw_body=f'{{"n": {total}, "data": []}}'.encode()))
        job = _job(tmp_path / "job.toml", url=home.url + "/t", out="out",
                   pagination='style = "page"\ntotal_pages_path = "n"')
        result = harvest("run", str(job), redis_url=server.url, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    failed = failed_lines(tmp_path / "out")
    assert [f["page"] for f in failed] == [1]
    assert "announces more than 100,000,000 pages" in failed[0]["message"]
    assert manifest(tmp_path / "out")["pages"] == {"total": 1, "ok": 0, "failed": 1,
                                                   "pending": 0}


def test_finalizing_a_huge_cancelled_job_costs_what_was_committed(cluster, harvest, tmp_path):
    """A job of the largest allowed size (10^8 pages), cancelled after its first pages:
    the finalizer reads one bucket per bucket that holds a commit, not 781,250 (one per
    128 announced pages), and folds each such bucket once (HKEYS), measured in Redis's
    own command counts."""
    server, workers = cluster
    home = HostileServer()
    with home:
        home.route("/p", lambda r: respond(200, {"data": [1]}))
        job = _job(tmp_path / "job.toml", url=home.url + "/p", out="out",
                   pagination='style = "page"\npages = 100000000')
        job_id = harvest("run", str(job), "--detach", redis_url=server.url,
                         check_codes=(0,)).stdout.split()[1]
        client = server.client()
        deadline = time.monotonic() + 60
        while int(client.hget(f"hv:{{{job_id}}}:job", "committed") or 0) < 300:
            assert time.monotonic() < deadline, "no pages committed"
            time.sleep(0.2)
        before = _bucket_reads(client)
        harvest("cancel", job_id, redis_url=server.url, check_codes=(0,))
        deadline = time.monotonic() + 120
        while client.hget(f"hv:{{{job_id}}}:job", "state") != "cancelled":
            assert time.monotonic() < deadline, "the finalizer did not finish"
            time.sleep(0.2)
        after = _bucket_reads(client)
    committed = int(client.hget(f"hv:{{{job_id}}}:job", "committed"))
    buckets = committed // 128 + 2
    assert after["hgetall"] - before["hgetall"] <= buckets + 10, (after, before, committed)
    assert after["hkeys"] - before["hkeys"] <= buckets + 10, (after, before, committed)
    assert manifest(tmp_path / "out")["pages"]["ok"] == committed


def _bucket_reads(client) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
            for name in ("hgetall", "hkeys")}


# --------------------------------------------------------------- items 5, 6

@pytest.mark.parametrize("case", ["root", "parent", "symlink", "system", "home", "file"])
def test_output_dirs_that_are_not_the_jobs_own_are_refused(case, harvest, tmp_path):
    """dir = "/" (or /etc, or $HOME), a ".." that lands in a non-empty parent, a symlink,
    or a plain file: exit 2 naming the path, before any broker is contacted, and
    nothing is written."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "neighbour.txt").write_text("keep me")
    target = {"root": "/", "parent": "..", "symlink": "link", "system": "/etc",
              "home": str(Path.home()), "file": "plain"}[case]
    if case == "symlink":
        victim = tmp_path / "victim"
        victim.mkdir()
        (work / "link").symlink_to(victim)
    if case == "file":
        (work / "plain").write_text("x")
    job = _job(work / "job.toml", url="http://127.0.0.1:9/x", out=target,
               pagination='style = "page"\npages = 1')
    harvest.cwd = work  # relative output dirs are relative to where harvest runs
    before = sorted(os.listdir("/"))
    result = harvest("run", str(job), redis_url="redis://127.0.0.1:9/0")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    named = {"root": "/:", "parent": str(tmp_path), "symlink": str(work / "link"),
             "system": "/etc", "home": str(Path.home()), "file": str(work / "plain")}[case]
    assert named in result.stderr, result.stderr
    assert sorted(os.listdir("/")) == before
    assert not list(tmp_path.rglob(".harvest-job"))
    if case == "symlink":
        assert list((tmp_path / "victim").iterdir()) == []


def test_a_directory_holding_someone_elses_files_is_refused_untouched(harvest, tmp_path):
    """A dir with another tool's part-00000.jsonl.gz and _failed.jsonl (no manifest) is
    refused (exit 2, naming the files); their bytes are unchanged."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000.jsonl.gz").write_bytes(b"someone else's data")
    (out / "_failed.jsonl").write_text("{}\n")
    job = _job(tmp_path / "job.toml", url="http://127.0.0.1:9/x", out="out",
               pagination='style = "page"\npages = 1')
    result = harvest("run", str(job), redis_url="redis://127.0.0.1:9/0")
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "part-00000.jsonl.gz" in result.stderr
    assert (out / "part-00000.jsonl.gz").read_bytes() == b"someone else's data"
    assert sorted(p.name for p in out.iterdir()) == ["_failed.jsonl", "part-00000.jsonl.gz"]


def test_oversized_job_files_and_values_are_refused(harvest, tmp_path):
    """A 50 MB job file exits 2 naming the file, without being read whole; a 100 KB header
    value exits 2 naming the header's key."""
    big = tmp_path / "big.toml"
    with open(big, "w") as handle:
        handle.write('[job]\nname = "big"\nurl = "http://127.0.0.1:9/x"\nparams = { pad = "')
        handle.write("a" * (50 << 20))
        handle.write('" }\n[pagination]\nstyle = "page"\npages = 1\n[output]\ndir = "out"\n')
    result = harvest("run", str(big), redis_url="redis://127.0.0.1:9/0")
    assert result.returncode == 2 and f"{big}: job file is over 1,024 KiB" in result.stderr
    header = _job(tmp_path / "header.toml", url="http://127.0.0.1:9/x", out="out",
                  pagination='style = "page"\npages = 1', headers={"X-Big": "h" * 100_000})
    result = harvest("run", str(header), redis_url="redis://127.0.0.1:9/0")
    assert result.returncode == 2 and "job.headers.X-Big" in result.stderr, result.stderr
