"""``--local``: the whole distributed machinery on this machine, no set-up.

A private ``redis-server`` (AOF on, data under ``$HARVEST_HOME/local-redis`` so a
job's ledger outlives the run and ``harvest retry --local`` finds it) and N
Celery worker processes, each in its own process group, restarted when one
dies, all stopped when the command ends: by its own hand on the way out, and
by the kernel (``PR_SET_PDEATHSIG``) if the command is killed outright, so a
killed ``harvest run --local`` leaves no redis-server or worker behind.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
import structlog

from ..engine.dispatch import QUEUE
from ..errors import LocalClusterError

log = structlog.get_logger("harvester.local")


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int, sig: int = signal.SIGTERM):
    """A ``preexec_fn``: the child gets ``sig`` when this process dies, however it
    dies (Linux; elsewhere a no-op, and only a clean exit stops the children)."""
    def set_up() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return set_up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._lock_file = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalClusterError("redis-server is not installed; run scripts/setup (or"
                                    " 'apt-get install redis-server') first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.data_dir / "lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalClusterError(
                f"another 'harvest ... --local' is using {self.data_dir}; wait for it, or set"
                " HARVEST_HOME to another directory") from None
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--maxmemory-policy", "noeviction", "--logfile", "redis.log",
             "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent(os.getpid()))
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = (self.process.stderr.read() or b"").decode(errors="replace") \
                    if self.process.poll() is not None else "no answer in 30 s"
                raise LocalClusterError(f"private redis-server did not start: {err.strip()}"
                                        f" (see {self.data_dir / 'redis.log'})")
            time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                redis.Redis(port=self.port, socket_timeout=30).shutdown(save=False, nosave=False)
            except redis.RedisError:
                pass  # shutdown closes the connection under us
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


class WorkerPool:
    """N ``celery worker`` processes, restarted when one dies."""

    MAX_RESTARTS_PER_MINUTE = 30

    def __init__(self, redis_url: str, count: int, threads: int, log_dir: Path):
        self.redis_url = redis_url
        self.count = count
        self.threads = threads
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen | None] = [None] * count
        self._stopping = threading.Event()
        self._restarts: list[float] = []
        self._supervisor = threading.Thread(target=self._supervise, name="local-supervisor",
                                            daemon=True)
        self.failure: str | None = None

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "workers.celery_worker",
                "-P", "threads", "-c", str(self.threads), "-Q", QUEUE, "-E",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "-n", f"local{index}-{os.getpid()}@%h", "--loglevel", "INFO"]

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            self._spawn(index)
        self._supervisor.start()

    def _spawn(self, index: int) -> None:
        env = {**os.environ, "HARVEST_REDIS_URL": self.redis_url}
        log_file = open(self.log_dir / f"worker-{index}.log", "ab")
        self.processes[index] = subprocess.Popen(
            self.command(index), env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
            # SIGKILL, not a warm shutdown: with the command gone, its redis-server
            # goes too, and a warm shutdown would wait on Redis for minutes. Nothing
            # committed is lost; pages in flight are simply not committed.
            preexec_fn=_die_with_parent(os.getpid(), signal.SIGKILL))
        log_file.close()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            for index, process in enumerate(self.processes):
                if process is None or process.poll() is None or self._stopping.is_set():
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < 60] + [now]
                if len(self._restarts) > self.MAX_RESTARTS_PER_MINUTE:
                    self.failure = (f"workers keep dying (see {self.log_dir}); giving up after"
                                    f" {self.MAX_RESTARTS_PER_MINUTE} restarts in a minute")
                    return
                print(f"worker {index} exited with {process.returncode}; restarting",
                      file=sys.stderr, flush=True)
                self._spawn(index)

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        live = [p for p in self.processes if p is not None and p.poll() is None]
        for process in live:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in live:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


class LocalCluster:
    def __init__(self, home: Path, workers: int, threads: int):
        self.redis = LocalRedis(home / "local-redis")
        self.home = home
        self.workers_count = workers
        self.threads = threads
        self.workers: WorkerPool | None = None

    def start_redis(self) -> str:
        self.redis.start()
        return self.redis.url

    def start_workers(self, log_name: str) -> None:
        self.workers = WorkerPool(self.redis.url, self.workers_count, self.threads,
                                  self.home / "logs" / log_name)
        self.workers.start()

    def stop(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        self.redis.stop()
