"""`harvest serve` as a real process, and a Server-Sent Events reader for its streams."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from .services import HARVEST, REPO_ROOT, free_port, kill_tree, wait_for

TOKEN = "test-token/0123+456789=abcdef"  # characters a URL must escape


class Service:
    def __init__(self, redis_url: str, env: dict[str, str], cwd: Path, *,
                 token: str = TOKEN):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.env = {**env, "HARVEST_REDIS_URL": redis_url, "HARVEST_API_TOKEN": token}
        self.cwd = cwd
        self.process: subprocess.Popen | None = None
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def start(self) -> "Service":
        log = open(self.cwd / "serve.log", "ab")
        self.process = subprocess.Popen([*HARVEST, "serve", "--port", str(self.port)],
                                        env={**self.env, "PYTHONPATH": str(REPO_ROOT)},
                                        cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()

        def up() -> bool:
            assert self.process.poll() is None, (self.cwd / "serve.log").read_text()
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        wait_for(up, timeout=30, what="harvest serve to answer /healthz")
        return self

    def stop(self) -> None:
        if self.process is not None:
            kill_tree(self.process.pid)
            self.process.wait()

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def events(self, job_id: str, *, last_event_id: str | None = None,
               timeout: float = 120) -> list["Event"]:
        """Every event of a job's stream, read until the server ends it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self.get(f"/jobs/{job_id}/events", headers=headers, stream=True,
                      timeout=timeout) as response:
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/event-stream")
            return list(parse_events(response.iter_content(chunk_size=None)))


@dataclass
class Event:
    event: str
    id: str | None
    data: dict


def parse_events(chunks):
    """Split a text/event-stream into events (comments and retry fields skipped)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in block.decode().splitlines():
                if line.startswith(":") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "data" in fields:
                yield Event(fields.get("event", "message"), fields.get("id"),
                            json.loads(fields["data"]))


def rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


