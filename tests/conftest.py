"""Shared fixtures: a private redis-server per test, real worker processes,
the demo API as a real HTTP server, and a runner for the ``harvest`` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.demo import start_demo_api  # noqa: E402
from support.jobs import job_toml  # noqa: E402
from support.services import HARVEST, REPO_ROOT, RedisServer, Workers  # noqa: E402


@pytest.fixture(scope="session")
def demo_api():
    """One demo API for the session; tests that set faults clear them after."""
    with start_demo_api() as server:
        yield server


@pytest.fixture
def api(demo_api):
    demo_api.clear_faults()
    demo_api.reset_stats()
    yield demo_api
    demo_api.clear_faults()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


@pytest.fixture
def env(tmp_path):
    """Environment for CLI and worker processes: private HARVEST_HOME, short leases."""
    return {**os.environ, "HARVEST_HOME": str(tmp_path / "home"), "HARVEST_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def workers(redis_server, env, tmp_path):
    pool = Workers(redis_server.url, env, tmp_path / "worker-logs")
    yield pool
    pool.stop()


@pytest.fixture
def service(redis_server, workers, env, tmp_path):
    """`harvest serve` on a free port, with workers, against the test's Redis."""
    from support.service import Service

    workers.start()
    server = Service(redis_server.url, env, tmp_path).start()
    yield server
    server.stop()


class Harvest:
    """Runs ``harvest`` as a real subprocess in ``cwd``."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.env = env
        self.cwd = cwd

    def __call__(self, *args: str, timeout: float = 300, redis_url: str | None = None,
                 check_codes: tuple[int, ...] | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if redis_url:
            env["HARVEST_REDIS_URL"] = redis_url
        result = subprocess.run([*HARVEST, *args], env=env, cwd=self.cwd, capture_output=True,
                                text=True, timeout=timeout)
        if check_codes is not None and result.returncode not in check_codes:
            raise AssertionError(f"harvest {' '.join(args)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def popen(self, *args: str, redis_url: str | None = None) -> subprocess.Popen:
        env = dict(self.env)
        if redis_url:
            env["HARVEST_REDIS_URL"] = redis_url
        return subprocess.Popen([*HARVEST, *args], env=env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def harvest(env, tmp_path):
    return Harvest(env, tmp_path)


def write_job(path: Path, *, url: str, out: str = "out", name: str = "test",
              params: dict | None = None, headers: dict | None = None,
              pagination: str = 'style = "page"\npages = 20', extra: str = "") -> Path:
    return job_toml(path, url=url, params=params or {"per_page": 5}, headers=headers,
                    pagination=pagination, extra=extra, out=out, name=name,
                    http="timeout_connect = 2\ntimeout_read = 5\npage_deadline = 30\n"
                         "retries = 2\nbackoff_factor = 0.05\nbackoff_max = 0.2")


@pytest.fixture
def job_file(tmp_path):
    def make(**kwargs) -> Path:
        return write_job(tmp_path / f"{kwargs.get('name', 'test')}.toml", **kwargs)
    return make


__all__ = ["REPO_ROOT", "write_job"]
