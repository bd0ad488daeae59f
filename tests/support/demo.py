"""Start the bundled demo API in a subprocess, for tests and benchmarks.

    rules = [{"kind": "status", "status": 503, "pages": [2]}]
    with start_demo_api(token="s3cret", faults=rules) as demo:
        requests.get(f"{demo.url}/items?page=1", headers={"Authorization": "Bearer s3cret"})
        demo.set_faults([{"kind": "reset", "paths": ["/big"]}])
        assert demo.stats()["by_page"]["/items:1"] == 1

The server runs as ``python -m harvester.demo`` (a real separate process with
real sockets, like the API a harvester would face) on a free port the server
picks itself (``--port 0``), so parallel test runs never race for a port.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
_BANNER = re.compile(r"^demo-api listening on (http://\S+)$")


class DemoServer:
    """A running demo API process; stop it with :meth:`stop` or by leaving a ``with`` block."""

    def __init__(self, process: subprocess.Popen, url: str, log_file) -> None:
        self.process = process
        self.url = url
        self._log_file = log_file
        self._admin = requests.Session()

    def set_faults(self, rules: list[dict]) -> None:
        """Replace the fault rules (and restart their per-page counters)."""
        self._admin_call("POST", "/_admin/faults", data=json.dumps(rules))

    def clear_faults(self) -> None:
        self._admin_call("DELETE", "/_admin/faults")

    def stats(self) -> dict:
        """``requests``, ``by_path``, ``by_page``, ``in_flight``, ``max_in_flight``, ``times``."""
        return self._admin_call("GET", "/_admin/stats")

    def reset_stats(self) -> None:
        self._admin_call("POST", "/_admin/reset")

    def log_text(self) -> str:
        """What the server wrote to stderr so far (warnings and errors only)."""
        self._log_file.flush()
        return Path(self._log_file.name).read_text(errors="replace")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._admin.close()
        if self.process.stdout:
            self.process.stdout.close()
        if not self._log_file.closed:
            self._log_file.close()
            Path(self._log_file.name).unlink(missing_ok=True)

    def _admin_call(self, method: str, path: str, **kwargs) -> dict:
        response = self._admin.request(method, self.url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> DemoServer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_demo_api(
    token: str | None = None,
    latency_ms: float = 0,
    faults: list[dict] | None = None,
    host: str = "127.0.0.1",
    cache_mb: int | None = None,
    port: int | None = None,
    startup_timeout: float = 20.0,
    wrap: list[str] | None = None,
) -> DemoServer:
    """Start the demo API and return once it answers on ``DemoServer.url``.

    The token travels in ``DEMO_API_TOKEN``, not on the command line where
    ``ps`` would show it. ``port=None`` lets the server pick a free port.
    """
    command = [*(wrap or []), sys.executable, "-m", "harvester.demo", "--host", host,
               "--port", str(port or 0)]
    if latency_ms:
        command += ["--latency-ms", str(latency_ms)]
    if faults:
        command += ["--faults", json.dumps(faults)]
    if cache_mb:
        command += ["--cache-mb", str(cache_mb)]
    env = {k: v for k, v in os.environ.items() if k != "DEMO_API_TOKEN"}
    if token is not None:
        env["DEMO_API_TOKEN"] = token
    # Importable even when the project is not installed in the interpreter.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))

    log_file = tempfile.NamedTemporaryFile(prefix="demo-api-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_file, env=env, text=True)
    server = DemoServer(process, "", log_file)
    try:
        server.url = _await_banner(process, startup_timeout)
        _await_health(server, startup_timeout)
    except BaseException as error:
        log = server.log_text()
        server.stop()
        if isinstance(error, Exception):
            raise RuntimeError(f"demo API did not start ({error}); its log:\n{log}") from error
        raise
    return server


def _await_banner(process: subprocess.Popen, timeout: float) -> str:
    """Read the ``demo-api listening on URL`` line and return URL."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=0.05):
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(f"exited with code {process.wait()}")
                match = _BANNER.match(line.strip())
                if match:
                    return match.group(1)
            elif process.poll() is not None:
                raise RuntimeError(f"exited with code {process.returncode}")
    raise TimeoutError(f"no banner within {timeout} s")


def _await_health(server: DemoServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server._admin.get(f"{server.url}/_admin/health", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.url} did not answer within {timeout} s")
        time.sleep(0.02)
