"""Harvester benchmark: speed and memory beside a hand-rolled baseline.

Everything runs on this machine against one demo API process:

- baseline: a ThreadPoolExecutor of 32 threads, each with its own retrying
  requests.Session; it buffers every page in memory (validated with json.loads)
  and writes them gzip'ed at the end.
- harvester: `harvest run` against a private redis-server and `harvest worker`
  processes started here (the same machinery as --local, kept running between
  scenarios so start-up is not timed).

Prints one table. Numbers depend on the machine; run `scripts/bench --help`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.demo import start_demo_api  # noqa: E402
from support.services import RedisServer, Workers, tree_rss  # noqa: E402

HARVEST = [sys.executable, "-m", "harvester.cli"]


# ------------------------------------------------------------------ baseline

def baseline(url: str, pages: int, params: dict, out: Path) -> dict:
    """The seed baseline, run in a child process so its RSS is its own."""
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            s = requests.Session()
            retry = Retry(total=5, backoff_factor=0.5, status_forcelist=[429, 500, 502, 503, 504])
            s.mount("http://", HTTPAdapter(max_retries=retry))
            local.session = s
        return local.session

    def fetch(page: int) -> bytes:
        response = session().get(url, params={**params, "page": page}, timeout=(5, 30))
        response.raise_for_status()
        body = response.content
        json.loads(body)
        return body

    started = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        bodies = list(pool.map(fetch, range(1, pages + 1)))
    with gzip.open(out, "wb", compresslevel=6) as handle:
        for page, body in enumerate(bodies, 1):
            handle.write(b'{"page":%d,"body":' % page + body.replace(b"\n", b" ") + b"}\n")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": sum(map(len, bodies)), "cpu": time.process_time()}


def run_baseline(url: str, pages: int, params: dict, workdir: Path, api=None) -> dict:
    api_cpu = _cpu([api.process.pid]) if api else 0.0
    command = [sys.executable, __file__, "_baseline", url, str(pages), json.dumps(params),
               str(workdir / "baseline.jsonl.gz")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = _watch_rss(process)
    result = json.loads(process.stdout.read())
    process.wait()
    result["peak_rss"] = peak
    result["api_cpu"] = _cpu([api.process.pid]) - api_cpu if api else 0.0
    (workdir / "baseline.jsonl.gz").unlink(missing_ok=True)
    return result


def bare_read(url: str, pages: list[int], params: dict, threads: int) -> dict:
    """The floor for any client: stream every page and throw the bytes away (no
    parsing, no compression, no disk), one Session per thread."""
    local = threading.local()

    def fetch(page: int) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        with local.session.get(url, params={**params, "page": page}, stream=True,
                               timeout=(5, 60)) as response:
            response.raise_for_status()
            return sum(len(chunk) for chunk in response.raw.stream(1 << 20,
                                                                   decode_content=False))

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(fetch, pages))
    return {"seconds": time.perf_counter() - started, "bytes": total}


def bare_chain(url: str, params: dict) -> dict:
    """A cursor chain read by the simplest loop: one Session, json.loads, follow
    meta.next_cursor; nothing written. What any client gets at the API's latency."""
    session = requests.Session()
    started = time.perf_counter()
    pages, cursor = 0, None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = session.get(url, params=query, timeout=(5, 30)).json()
        pages += 1
        cursor = body["meta"]["next_cursor"]
        if not cursor:
            break
    return {"seconds": time.perf_counter() - started, "pages": pages}


def socket_chain(url: str, params: dict) -> dict:
    """The same chain read over one raw keep-alive socket (HTTP/1.1 by hand, the body
    by its Content-Length, json.loads): what the API and its latency leave for a
    client with next to no per-request CPU, the ceiling of any requests-based one."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    started = time.perf_counter()
    pages, cursor, pending = 0, None, b""
    try:
        while True:
            query = urlencode({**params, **({"cursor": cursor} if cursor else {})})
            sock.sendall(f"GET {parts.path}?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                         "Accept: application/json\r\n\r\n".encode())
            while b"\r\n\r\n" not in pending:
                pending += sock.recv(65536)
            head, pending = pending.split(b"\r\n\r\n", 1)
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(pending) < length:
                pending += sock.recv(65536)
            body, pending = json.loads(pending[:length]), pending[length:]
            pages += 1
            cursor = body["meta"]["next_cursor"]
            if not cursor:
                break
    finally:
        sock.close()
    return {"seconds": time.perf_counter() - started, "pages": pages}


def run_bare(url: str, pages: int, params: dict, processes: int, threads: int) -> dict:
    """bare_read in ``processes`` processes of ``threads`` threads (the workers' shape),
    each reading every ``processes``-th page."""
    command = [sys.executable, __file__, "_bare", url, str(pages), json.dumps(params),
               str(threads)]
    started = time.perf_counter()
    children = [subprocess.Popen([*command, str(i), str(processes)], stdout=subprocess.PIPE,
                                 text=True) for i in range(processes)]
    results = [json.loads(child.communicate()[0]) for child in children]
    return {"seconds": time.perf_counter() - started,
            "bytes": sum(result["bytes"] for result in results)}


# ----------------------------------------------------------------- harvester

class Cluster:
    def __init__(self, workdir: Path, workers: int, threads: int, level: int | None = None,
                 profile: Path | None = None):
        self.workdir = workdir
        self.level = level  # compress_level; None = the job default
        self.profile = profile  # a py-spy flame graph of one worker, for one scenario
        self.profile_scenario = "small"
        self.redis = RedisServer(workdir / "redis").start()
        env = {**os.environ, "HARVEST_HOME": str(workdir / "home"), "HARVEST_LOG_LEVEL": "WARNING"}
        self.env = {**env, "HARVEST_REDIS_URL": self.redis.url}
        self.workers = Workers(self.redis.url, env, workdir / "logs", count=workers,
                               threads=threads).start()
        time.sleep(3)  # let the workers connect before anything is timed

    def run(self, name: str, url: str, params: dict, pagination: str, sample_redis=False,
            api=None, monitor=False, shown: list | None = None) -> dict:
        """One job; with ``monitor``, every Redis command is logged by MONITOR (slower:
        not for timing) and counted as round trips (sent by a client) or Lua's. With
        ``shown``, the CLI's progress goes to a terminal (a pty, so it redraws on every
        poll as a user sees it) and each count it shows is appended with its time."""
        out = self.workdir / f"out-{name}"
        shutil.rmtree(out, ignore_errors=True)
        job = self.workdir / f"{name}.toml"
        params_toml = ", ".join(f"{k} = {json.dumps(v)}" for k, v in params.items())
        job.write_text(f'[job]\nname = "{name}"\nurl = "{url}"\nparams = {{ {params_toml} }}\n'
                       f'[pagination]\n{pagination}\n[http]\npage_deadline = 900\n'
                       f'[output]\ndir = "{out}"\n'
                       + (f"compress_level = {self.level}\n" if self.level else ""))
        client = self.redis.client()
        redis_peak = [client.info("memory")["used_memory"]]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                redis_peak.append(client.info("memory")["used_memory"])

        sampler = threading.Thread(target=sample, daemon=True)
        if sample_redis:
            sampler.start()
        worker_pids = [p.pid for p in self.workers.processes]
        cpu_before = (_cpu(worker_pids), _cpu([self.redis.process.pid]),
                      _cpu([api.process.pid]) if api else 0.0)
        commands_before = client.info("stats")["total_commands_processed"]
        monitor_log = self.workdir / "monitor.log"
        watcher = subprocess.Popen(["redis-cli", "-p", str(self.redis.port), "monitor"],
                                   stdout=monitor_log.open("w"),
                                   stderr=subprocess.DEVNULL) if monitor else None
        if watcher is not None:
            time.sleep(0.5)
        spy = None
        if self.profile and name == self.profile_scenario:
            # The first worker's thread that holds the GIL (--gil), native frames off: where
            # its Python CPU goes (without --gil py-spy counts threads waiting on sockets).
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker_pids[0]),
                                    "--subprocesses", "--gil", "--rate", "250", "--format",
                                    "raw" if str(self.profile).endswith(".txt") else "flamegraph",
                                    "--output", str(self.profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.profile = None  # once
            time.sleep(1)
        started = time.perf_counter()
        terminal = pty.openpty() if shown is not None else None
        process = subprocess.Popen([*HARVEST, "run", str(job)], env=self.env,
                                   stdout=subprocess.PIPE,
                                   stderr=terminal[1] if terminal else subprocess.PIPE, text=True)
        if terminal:
            os.close(terminal[1])
            threading.Thread(target=_read_progress, args=(terminal[0], shown),
                             daemon=True).start()
        peak_rss = 0
        while process.poll() is None:
            for proc in [process, *self.workers.processes]:
                peak_rss = max(peak_rss, max(tree_rss(proc.pid).values(), default=0))
            time.sleep(0.1)
        wall = time.perf_counter() - started
        stop.set()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
        commands = client.info("stats")["total_commands_processed"] - commands_before - 1
        round_trips = lua_calls = 0
        if watcher is not None:
            time.sleep(0.5)
            watcher.terminate()
            watcher.wait()
            with monitor_log.open() as lines:
                for line in lines:
                    if " [" not in line:
                        continue
                    if " lua] " in line:
                        lua_calls += 1
                    elif '"monitor"' not in line.lower() and '"info"' not in line.lower():
                        round_trips += 1
            monitor_log.unlink()
        cpu_after = (_cpu(worker_pids), _cpu([self.redis.process.pid]),
                     _cpu([api.process.pid]) if api else 0.0)
        if process.returncode != 0:
            said = process.stderr.read()[-2000:] if process.stderr else "(on the terminal)"
            raise SystemExit(f"harvest run {name} failed: {said}")
        manifest = json.loads((out / "_manifest.json").read_text())
        job_seconds = (_ts(manifest["finished_at"]) - _ts(manifest["started_at"]))
        result = {"seconds": job_seconds, "wall": wall, "bytes": manifest["raw_bytes"],
                  "peak_rss": peak_rss, "redis_peak": max(redis_peak),
                  "pages": manifest["pages"]["ok"], "commands": commands,
                  "round_trips": round_trips, "lua_calls": lua_calls,
                  "cpu": {part: after - before for part, after, before in
                          zip(("workers", "redis", "api"), cpu_after, cpu_before)}}
        shutil.rmtree(out, ignore_errors=True)
        return result

    def stop(self) -> None:
        self.workers.stop()
        self.redis.kill()


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by ``pids`` and every live descendant."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _warm(url: str, pages: int, params: dict) -> None:
    """Request every page once, so the API serves them from its cache when timed."""
    with ThreadPoolExecutor(8) as pool, requests.Session() as session:
        list(pool.map(lambda page: session.get(url, params={**params, "page": page},
                                               timeout=60).content, range(1, pages + 1)))


def _watch_rss(process: subprocess.Popen) -> int:
    peak = 0
    while process.poll() is None:
        peak = max(peak, max(tree_rss(process.pid).values(), default=0))
        time.sleep(0.05)
    return peak


def naive_enqueue_memory(pages: int, workdir: Path) -> int:
    """Redis memory when every page's Celery message is enqueued up front."""
    from harvester.engine.dispatch import CeleryDispatcher
    from harvester.settings import Settings
    from workers.app import make_app

    server = RedisServer(workdir / "naive-redis", appendonly=False).start()
    try:
        settings = Settings.from_env()
        app = make_app(settings.__class__(**{**settings.__dict__, "redis_url": server.url}))
        dispatcher = CeleryDispatcher(app)
        before = server.client().info("memory")["used_memory"]
        with app.producer_or_acquire() as producer:
            for page in range(1, pages + 1):
                app.send_task("harvester.page", args=["naive-job-20260101T000000-abcdef", page],
                              queue="harvest", producer=producer)
        del dispatcher
        return server.client().info("memory")["used_memory"] - before
    finally:
        server.kill()


# ------------------------------------------------------------------- report

def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--small-pages", type=int, default=5000)
    parser.add_argument("--mb-pages", type=int, default=300)
    parser.add_argument("--big-bytes", type=int, default=1 << 30)
    parser.add_argument("--redis-pages", type=int, default=200_000)
    parser.add_argument("--chain-pages", type=int, default=2000)
    parser.add_argument("--profile", type=Path, default=None, metavar="SVG",
                        help="write a py-spy flame graph of one worker during the small pages"
                             " (collapsed stacks if the name ends in .txt); only the thread"
                             " holding the GIL is sampled, so it shows where Python's CPU goes,"
                             " not where threads wait")
    parser.add_argument("--profile-scenario", default="small",
                        help="the scenario --profile samples: small (default), mb, big, chain")
    parser.add_argument("--compress-level", type=int, default=None,
                        help="the jobs' compress_level (default: the job default)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the small-pages scenario; the median is shown")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="scenarios to skip: small mb big redis chain")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="harvest-bench-"))
    rows: list[tuple[str, str, str, str]] = []
    # The API keeps every encoded page (512 MB), warmed before the 1 MB pages are
    # timed: otherwise it re-encodes each 1 MB page (~12 ms of CPU per MB) and the
    # benchmark measures the API, not the clients.
    with start_demo_api(cache_mb=512) as api:
        cluster = Cluster(workdir, args.workers, args.threads, args.compress_level,
                          args.profile)
        cluster.profile_scenario = args.profile_scenario
        try:
            if "small" not in args.skip:
                params = {"per_page": 10, "pad": 950}
                n = args.small_pages
                trials = []
                for _ in range(args.repeat):
                    base = run_baseline(f"{api.url}/items", n, {**params, "pages": n}, workdir,
                                        api=api)
                    ours = cluster.run("small", f"{api.url}/items", {**params, "pages": n},
                                       f'style = "page"\npages = {n}', api=api)
                    trials.append((base, ours, base["seconds"] / ours["seconds"]))
                trials.sort(key=lambda trial: trial[2])
                base, ours, ratio = trials[len(trials) // 2]  # the median by ratio
                size = ours["bytes"] / n
                spread = (f"; over {len(trials)} runs {trials[0][2]:.2f}-{trials[-1][2]:.2f}x"
                          if len(trials) > 1 else "")
                rows.append((f"{n:,} pages of {size / 1e3:.0f} KB: pages/s",
                             f"{n / base['seconds']:,.0f}",
                             f"{n / ours['seconds']:,.0f} (wall {n / ours['wall']:,.0f})",
                             f"{ratio:.2f}x (floor 1.0x, goal 1.5x){spread}"))
                ms = 1000 / n
                rows.append(("  CPU ms per page: client (workers)", f"{base['cpu'] * ms:.2f}",
                             f"{ours['cpu']['workers'] * ms:.2f}", "floor <= 1.2, goal 0.8"))
                rows.append(("  CPU ms per page: Redis", "",
                             f"{ours['cpu']['redis'] * ms:.2f}", ""))
                rows.append(("  CPU ms per page: API", f"{base['api_cpu'] * ms:.2f}",
                             f"{ours['cpu']['api'] * ms:.2f}", ""))
                rows.append(("  Redis commands per page (Lua's included)", "",
                             f"{ours['commands'] / n:.1f}", ""))
                # Counted apart from the timed runs: MONITOR slows Redis down.
                counted_pages = min(n, 2000)
                counted = cluster.run("small", f"{api.url}/items",
                                      {**params, "pages": counted_pages},
                                      f'style = "page"\npages = {counted_pages}', monitor=True)
                rows.append(("  Redis round trips per page (MONITOR, "
                             f"{counted_pages:,} pages)", "",
                             f"{counted['round_trips'] / counted_pages:.2f}",
                             f"floor <= 2, goal < 1; plus {counted['lua_calls'] / counted_pages:.1f}"
                             " commands inside Lua"))
            if "mb" not in args.skip:
                params = {"per_page": 1000, "pad": 950}
                n = args.mb_pages
                _warm(f"{api.url}/items", n, {**params, "pages": n})
                base = run_baseline(f"{api.url}/items", n, {**params, "pages": n}, workdir)
                ours = cluster.run("mb", f"{api.url}/items", {**params, "pages": n},
                                   f'style = "page"\npages = {n}')
                rows.append((f"{n} pages of {ours['bytes'] / n / 1e6:.2f} MB: MB/s",
                             f"{base['bytes'] / base['seconds'] / 1e6:,.1f}",
                             f"{ours['bytes'] / ours['seconds'] / 1e6:,.1f}",
                             f"{(ours['bytes'] / ours['seconds']) / (base['bytes'] / base['seconds']):.2f}x"
                             " (floor 3x, goal 5x)"))
                rows.append(("  peak RSS", mb(base["peak_rss"]), mb(ours["peak_rss"]), ""))
                bare = run_bare(f"{api.url}/items", n, {**params, "pages": n}, args.workers,
                                args.threads)
                bare_rate = bare["bytes"] / bare["seconds"]
                rows.append((f"  a bare streamed read of the same pages ({args.workers} x"
                             f" {args.threads} threads): MB/s", "", f"{bare_rate / 1e6:,.1f}",
                             f"harvester / bare = {(ours['bytes'] / ours['seconds']) / bare_rate:.2f}"
                             " (floor 0.6, goal 0.8)"))
            if "big" not in args.skip:
                size = args.big_bytes
                base = run_baseline(f"{api.url}/big", 1, {"bytes": size}, workdir)
                ours = cluster.run("big", f"{api.url}/big", {"bytes": size},
                                   'style = "page"\npages = 1')
                rows.append((f"one {size / 2**30:.2f} GiB page: MB/s",
                             f"{base['bytes'] / base['seconds'] / 1e6:,.1f}",
                             f"{ours['bytes'] / ours['seconds'] / 1e6:,.1f}",
                             "floor 150 MB/s, goal 250"))
                rows.append(("  peak RSS (largest process)", mb(base["peak_rss"]),
                             mb(ours["peak_rss"]), "floor <= 64 MB"))
            if "redis" not in args.skip:
                n = args.redis_pages
                naive = naive_enqueue_memory(n, workdir)
                ours = cluster.run("redis", f"{api.url}/items", {"per_page": 1, "pages": n},
                                   f'style = "page"\npages = {n}', sample_redis=True)
                rows.append((f"{n:,}-page job: Redis peak memory", "n/a (no Redis)",
                             mb(ours["redis_peak"]),
                             f"all {n:,} messages enqueued up front: {mb(naive)}; target < 64 MB"))
                rows.append(("  pages/s of that job", "", f"{n / ours['seconds']:,.0f}", ""))
            if "chain" not in args.skip:
                n = args.chain_pages
                with start_demo_api(latency_ms=20) as slow:
                    params = {"per_page": 10, "pages": n}
                    chain = cluster.run("chain", f"{slow.url}/cursor", params,
                                        'style = "cursor"\ncursor_path = "meta.next_cursor"')
                    fan = cluster.run("fanout", f"{slow.url}/items", params,
                                      f'style = "page"\npages = {n}')
                    loop = bare_chain(f"{slow.url}/cursor", params)
                    raw = socket_chain(f"{slow.url}/cursor", params)
                rows.append((f"{n:,} pages, API latency 20 ms: pages/s",
                             f"bare cursor loop {loop['pages'] / loop['seconds']:,.1f}",
                             f"cursor chain {n / chain['seconds']:,.1f}; page style"
                             f" {n / fan['seconds']:,.0f}",
                             "chain floor 45, goal 48 (sequential: one page at a time)"))
                rows.append(("  the same chain over a raw socket (no requests): pages/s",
                             f"{raw['pages'] / raw['seconds']:,.1f}", "",
                             "what the API leaves for any client"))
        finally:
            cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nmachine: {os.cpu_count()} cores; harvester: {args.workers} worker processes x"
          f" {args.threads} threads; baseline: 32 threads\n")
    header = ("scenario", "baseline", "harvester", "ratio / target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def _read_progress(fd: int, shown: list) -> None:
    """Each 'pages N/' a terminal shows, with the time it was read."""
    pattern = re.compile(rb"pages ([0-9,]+)/")
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the CLI closed the terminal
            break
        if not chunk:
            break
        now = time.perf_counter()
        pending += chunk
        matches = list(pattern.finditer(pending))
        for match in matches:
            shown.append((now, int(match.group(1).replace(b",", b""))))
        if matches:
            pending = pending[matches[-1].end():]
        pending = pending[-200:]
    os.close(fd)


def progress_lag(shown: list, committed: list) -> list[float]:
    """How long after Redis held a count the CLI first showed it (or more): one lag per
    sample of ``committed`` ((time, count) from Redis every 20 ms); ``shown`` is (time,
    count) read off the terminal."""
    shown = sorted(shown)
    lags, i = [], 0
    for when, count in committed:
        if count == 0:
            continue
        while i < len(shown) and (shown[i][1] < count or shown[i][0] < when):
            i += 1
        if i == len(shown):
            break
        lags.append(shown[i][0] - when)
    return lags


# -------------------------------------------------------------------- scale

def scale_main(argv: list[str]) -> None:
    """`scripts/bench scale`: one job of many small pages from a fast local API:
    pages/s, Redis' peak memory and its bytes per committed page once the job is
    final, and the finalizer's time and peak RSS."""
    parser = argparse.ArgumentParser(prog="scripts/bench scale", description=scale_main.__doc__)
    parser.add_argument("--pages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="harvest-scale-"))
    rows = []
    with start_demo_api(cache_mb=256) as api:
        cluster = Cluster(workdir, args.workers, args.threads)
        try:
            for trial in range(args.repeat):
                rows.append(_scale_trial(cluster, api, args.pages, trial))
                row = rows[-1]
                print(f"run {trial + 1}: {row['rate']:,.0f} pages/s, Redis peak {mb(row['peak'])},"
                      f" {row['per_page']:.1f} B per committed page, finalizer"
                      f" {row['finalize']:.1f} s / {mb(row['final_rss'])}, progress lag"
                      f" {row['lag_median']:.2f} / {row['lag_max']:.2f} s", flush=True)
        finally:
            cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nmachine: {os.cpu_count()} cores; {args.workers} worker processes x"
          f" {args.threads} threads; {args.pages:,} pages of one record each\n")
    header = ("run", "pages/s", "Redis peak", "Redis B per committed page", "finalizer s",
              "finalizer peak RSS", "CLI progress lag median/max s")
    table = [header, *[(str(i + 1), f"{r['rate']:,.0f}", mb(r["peak"]),
                        f"{r['per_page']:.1f}", f"{r['finalize']:.1f}", mb(r["final_rss"]),
                        f"{r['lag_median']:.2f} / {r['lag_max']:.2f}")
                       for i, r in enumerate(rows)]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in [table[0], tuple("-" * w for w in widths), *table[1:]]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths)))


def _scale_trial(cluster: Cluster, api, pages: int, trial: int) -> dict:
    client = cluster.redis.client()
    base = client.info("memory")["used_memory"]  # earlier trials' jobs stay: deltas
    samples = {"peak": base, "final_rss": 0, "finalizing_at": None, "done_at": None}
    stop = threading.Event()
    worker_pids = [p.pid for p in cluster.workers.processes]
    committed: list[tuple[float, int]] = []  # (time, pages committed) every 20 ms
    shown: list[tuple[float, int]] = []

    def this_trials_job(redis_client, field: str) -> str | None:
        """A field of this trial's job; None until it is submitted (until then the newest
        job is the last trial's)."""
        jobs = redis_client.zrevrange("hv:jobs", 0, 0)
        if not jobs or not jobs[0].startswith(f"scale{trial}-"):
            return None
        return redis_client.hget(f"hv:{{{jobs[0]}}}:job", field)

    def follow() -> None:
        follower = cluster.redis.client()
        while not stop.wait(0.02):
            count = this_trials_job(follower, "committed")
            if count is not None:
                committed.append((time.perf_counter(), int(count)))

    def watch() -> None:
        stopped = False
        while not stopped:  # a last sample after the CLI is done
            stopped = stop.wait(0.1)
            samples["peak"] = max(samples["peak"], client.info("memory")["used_memory"])
            state = this_trials_job(client, "state")
            now = time.perf_counter()
            if state == "finalizing" and samples["finalizing_at"] is None:
                samples["finalizing_at"] = now
            if state == "finalizing":
                rss = max((max(tree_rss(pid).values(), default=0) for pid in worker_pids),
                          default=0)
                samples["final_rss"] = max(samples["final_rss"], rss)
            if state in ("done", "failed") and samples["done_at"] is None:
                samples["done_at"] = now

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    result = cluster.run(f"scale{trial}", f"{api.url}/items", {"per_page": 1, "pages": pages},
                         f'style = "page"\npages = {pages}', shown=shown)
    stop.set()
    watcher.join()
    follower.join()
    lags = sorted(progress_lag(shown, committed)) or [float("nan")]
    final = _settled_memory(client)
    # nan when the sampler never saw the job finalizing (a small job seals between samples)
    finalize = (samples["done_at"] - samples["finalizing_at"]
                if samples["done_at"] is not None and samples["finalizing_at"] is not None
                else float("nan"))
    return {"rate": pages / result["seconds"], "peak": samples["peak"] - base,
            "per_page": (final - base) / pages, "finalize": finalize,
            "final_rss": samples["final_rss"], "lag_median": lags[len(lags) // 2],
            "lag_max": lags[-1]}


def _settled_memory(client, timeout: float = 60.0) -> int:
    """Redis' used memory once the finalizer has folded the job's commit records, which
    it does just after the job reads final: the first reading that has not fallen for
    a second."""
    deadline = time.monotonic() + timeout
    last = client.info("memory")["used_memory"]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = client.info("memory")["used_memory"]
        if now >= last - 4096:
            return min(now, last)
        last = now
    return last


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        _, _, url, pages, params, out = sys.argv
        print(json.dumps(baseline(url, int(pages), json.loads(params), Path(out))))
    elif len(sys.argv) > 1 and sys.argv[1] == "scale":
        scale_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_bare":
        _, _, url, pages, params, threads, index, of = sys.argv
        mine = [page for page in range(1, int(pages) + 1) if page % int(of) == int(index)]
        print(json.dumps(bare_read(url, mine, json.loads(params), int(threads))))
    else:
        main()
