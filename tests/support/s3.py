"""A real S3-protocol server for tests: moto's server mode (``moto.server``, a
Werkzeug app speaking the S3 REST API over HTTP), in its own process on a free
port, plus the AWS environment that points boto3 at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from .services import free_port, wait_for

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "harvest-test-key", "AWS_SECRET_ACCESS_KEY":
               "harvest-test-secret-never-logged", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """``python -m moto.server`` on 127.0.0.1 (or ``host``); stop() kills it, start()
    brings it back on the same port (moto keeps its buckets in memory: a restart
    empties it)."""

    def __init__(self, log_dir: Path, host: str = "127.0.0.1", wrap: list[str] | None = None):
        self.host = host
        self.wrap = wrap or []
        self.port = free_port()
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url}

    def start(self) -> "S3Server":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "moto.log", "ab")
        self.process = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "moto.server", "-H", self.host, "-p",
             str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **CREDENTIALS})
        log.close()

        def up() -> bool:
            try:
                return requests.get(f"{self.url}/moto-api/", timeout=1).status_code < 500
            except requests.RequestException:
                return False

        wait_for(up, timeout=30, what="moto's S3 server to answer")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def client(self):
        import boto3

        return boto3.session.Session(**{
            "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "region_name": CREDENTIALS["AWS_DEFAULT_REGION"]}).client(
                "s3", endpoint_url=self.url)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=bucket,
                                                       Key=item["Key"])["Body"].read()
        return found


class RefusingProxy:
    """An HTTP proxy in front of the S3 server that can refuse for a while: while
    ``refusing`` is set, every request gets ``503 SlowDown`` (what S3 answers when
    overloaded) instead of reaching the store. Forwards everything else as is (the
    Host header included, so signatures stay valid)."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.refusing = threading.Event()
        self.refused = 0
        self.port = free_port()
        self.host = host

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self) -> None:
                body = self._body()
                if proxy.refusing.is_set():
                    proxy.refused += 1
                    error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown'
                             b'</Code><Message>Please reduce your request rate.</Message>'
                             b'</Error>')
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection")}
                headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer((host, self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "RefusingProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def download(server: S3Server, bucket: str, prefix: str, dest: Path) -> Path:
    """The output under ``prefix`` copied into ``dest`` (for the local output readers)."""
    dest.mkdir(parents=True, exist_ok=True)
    for key, data in server.objects(bucket, prefix).items():
        name = key[len(prefix):].lstrip("/")
        if "/" not in name:
            (dest / name).write_bytes(data)
    return dest
