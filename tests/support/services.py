"""Real services for integration tests: a private redis-server and real Celery
worker processes, each on its own port / process group so a test can restart
or kill them (modelled on celery.contrib.testing and rq's fixtures, but with
real processes instead of in-process threads)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

REPO_ROOT = Path(__file__).resolve().parents[2]
HARVEST = [sys.executable, "-m", "harvester.cli"]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition",
             interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def committed_pages(client: redis.Redis, job_id: str) -> set[int]:
    """Every page the ledger holds committed, before or after the job is sealed."""
    from harvester.edges.ledger import Ledger

    return Ledger(client).committed_pages(job_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server with AOF on, in ``data_dir``; restartable on the same port."""

    def __init__(self, data_dir: Path, *, password: str | None = None, appendonly: bool = True,
                 host: str = "127.0.0.1", wrap: list[str] | None = None):
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup")
        self.data_dir = data_dir
        self.port = free_port()
        self.password = password
        self.appendonly = appendonly
        self.host = host
        self.wrap = wrap or []  # e.g. ["ip", "netns", "exec", NS]: another host
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           decode_responses=True)

    def start(self) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [*self.wrap, "redis-server", "--port", str(self.port), "--bind", self.host,
                   "--dir", str(self.data_dir), "--save", "",
                   "--appendonly", "yes" if self.appendonly else "no",
                   "--appendfsync", "always", "--logfile", "redis.log"]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def private_cluster(root: Path, *, count: int = 2, threads: int = 4, **env: str):
    """A private redis-server and ``count`` worker processes under ``root``, with
    ``env`` added to the workers' environment; yields ``(server, workers)``."""
    server = RedisServer(root / "redis").start()
    environ = {**os.environ, "HARVEST_HOME": str(root / "home"), "HARVEST_LOG_LEVEL": "WARNING",
               **env}
    workers = Workers(server.url, environ, root / "logs", count=count, threads=threads).start()
    try:
        yield server, workers
    finally:
        workers.stop()
        server.kill()


class Workers:
    """``harvest worker`` processes against one broker, each in its own process group."""

    def __init__(self, redis_url: str, env: dict[str, str], log_dir: Path,
                 *, count: int = 2, threads: int = 4, wrap: list[str] | None = None):
        self.redis_url = redis_url
        self.wrap = wrap or []  # e.g. ["ip", "netns", "exec", NS]: another host
        self.env = {**env, "HARVEST_REDIS_URL": redis_url}
        self.log_dir = log_dir
        self.count = count
        self.threads = threads
        self.processes: list[subprocess.Popen] = []

    def start(self) -> "Workers":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(self.count):
            self.add()
        return self

    def add(self, wrap: list[str] | None = None) -> subprocess.Popen:
        index = len(self.processes)
        log = open(self.log_dir / f"worker-{index}.log", "ab")
        process = subprocess.Popen(
            [*(self.wrap if wrap is None else wrap), *HARVEST, "worker", "-c", str(self.threads), "-n", f"test{index}-{os.getpid()}@%h"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=REPO_ROOT)
        log.close()
        self.processes.append(process)
        return process

    def kill_tree(self, process: subprocess.Popen) -> None:
        """SIGKILL a worker and every process below it, all at once."""
        kill_tree(process.pid)
        process.wait()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_tree(process.pid)
                process.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        victims = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def tree_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of ``pid`` and every descendant."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    sizes = {}
    for proc in procs:
        try:
            sizes[proc.pid] = proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return sizes
