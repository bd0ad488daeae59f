"""Start API servers written by others (Django REST Framework, fastapi-pagination)
as real processes on free ports, for tests against APIs we did not write."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from .services import free_port

SITES = Path(__file__).resolve().parent / "sites"


@contextmanager
def serve(script: str, *args: str, probe: str = "/") -> Iterator[str]:
    """Run ``sites/<script>`` with a free port as its first argument; yields its URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SITES / script), str(port), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(url + probe, timeout=2).status_code < 500:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{script} did not start: {process.stderr.read()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def drf(tmp: Path, users: int = 1000) -> Iterator[str]:
    with serve("drf_site.py", str(tmp / "drf.sqlite3"), str(users), probe="/page/") as url:
        yield url


@contextmanager
def fastapi_pagination(records: int = 1000) -> Iterator[str]:
    with serve("fastapi_site.py", str(records), probe="/page") as url:
        yield url
