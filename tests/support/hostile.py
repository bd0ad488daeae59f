"""A hostile API on raw sockets, and a trap that proves nothing reached another host.

The demo API is well behaved; an attacker's server is not. :class:`HostileServer`
answers each request with bytes a test scripts in full (status line, headers,
body), so it can send what no framework would: a reason phrase holding a
secret, a backslash in a Location header, a Link to another host.
:class:`Trap` listens on another loopback address (127.0.0.2, same port) and
records every connection: a test asserts it saw none.

    with HostileServer() as api, Trap(api.port) as trap:
        api.route("/items", lambda req: respond(200, {"next": trap.url + "/steal"}))
        ...
        assert trap.connections == []
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


# A handler answers with the whole response, or with its pieces (streamed: a body
# of gigabytes never sits in the test's memory).
Handler = Callable[[Request], "bytes | Iterable[bytes]"]


def respond(status: int, body: object = None, *, reason: str = "OK",
            headers: dict[str, str] | None = None, raw_body: bytes | None = None) -> bytes:
    """A complete HTTP/1.1 response; ``reason`` and headers are sent as given (latin-1)."""
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
             f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


class _Listener:
    def __init__(self, host: str, port: int):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_request(conn: socket.socket) -> Request | None:
    conn.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Request(method, target, headers, rest[:length])


class HostileServer(_Listener):
    """Scripted raw responses per path; every request is recorded in ``requests``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.routes: dict[str, Handler] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def _serve(self, conn: socket.socket, peer) -> None:
        with conn:
            try:
                request = _read_request(conn)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                handler = self.routes.get(request.path)
                reply = handler(request) if handler else respond(404, {"error": "no route"},
                                                                 reason="Not Found")
                for piece in [reply] if isinstance(reply, bytes) else reply:
                    conn.sendall(piece)
            except OSError:
                pass


def streamed(status: int, head: bytes, repeat: bytes, times: int, tail: bytes, *,
             headers: dict[str, str] | None = None) -> Iterable[bytes]:
    """A response whose body is ``head + repeat * times + tail``, sent piece by piece
    with no Content-Length (the end of the body is the end of the connection)."""
    lines = [f"HTTP/1.1 {status} OK", "Content-Type: application/json", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    yield ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + head
    for _ in range(times):
        yield repeat
    yield tail


class Trap(_Listener):
    """Listens on ``host`` (another loopback address) and records every connection."""

    def __init__(self, port: int, host: str = "127.0.0.2"):
        super().__init__(host, port)
        self.connections = []
        self.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _serve(self, conn: socket.socket, peer) -> None:
        with conn:
            try:
                request = _read_request(conn)
            except OSError:
                request = None
            self.connections.append((peer, request))
            try:
                # Answer like a willing API, so a leak would show as a committed page too.
                conn.sendall(respond(200, {"data": ["stolen"], "next": None}))
            except OSError:
                pass


def paired(host: str = "127.0.0.1", trap_host: str = "127.0.0.2",
           attempts: int = 20) -> tuple[HostileServer, Trap]:
    """A hostile server and a trap on the same port number, another address."""
    last: OSError | None = None
    for _ in range(attempts):
        server = HostileServer(host)
        try:
            return server, Trap(server.port, trap_host)
        except OSError as exc:
            last = exc
            server.close()
    raise RuntimeError(f"no port free on both {host} and {trap_host}: {last}")
