"""Run the demo API: ``python -m harvester.demo --host 127.0.0.1 --port 8765``.

One uvicorn process on uvloop + httptools with the access log off, so the
demo stays cheap next to the harvester it serves. The listening socket is
bound before the banner is printed: once ``demo-api listening on
http://HOST:PORT`` is on stdout, connections are accepted (``--port 0`` picks
a free port and the banner says which).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

import uvicorn

from harvester.demo.api import DemoConfig, create_app
from harvester.demo.faults import FaultBook, FaultSpecError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harvester.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--token",
        default=os.environ.get("DEMO_API_TOKEN") or None,
        help="require this bearer token (default: $DEMO_API_TOKEN; none = open)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay before every non-admin response"
    )
    parser.add_argument("--faults", default="[]", help="initial fault rules as a JSON list")
    parser.add_argument("--cache-mb", type=int, default=64,
                        help="MB of encoded bodies kept (over 64, bodies up to 8 MiB are kept)")
    args = parser.parse_args(argv)
    try:
        args.faults = json.loads(args.faults)
        FaultBook(args.faults)  # validate now, for an error message instead of a traceback
    except (ValueError, FaultSpecError) as error:
        parser.error(f"--faults: {error}")
    return args


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket for ``host:port`` (IPv4 or IPv6, whichever ``host`` resolves to)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = create_app(DemoConfig(token=args.token, latency_ms=args.latency_ms, faults=args.faults,
                                cache_mb=args.cache_mb))
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
        server_header=False,
        # Streams still running at shutdown (a stalled fault, a huge body) are not
        # worth waiting for.
        timeout_graceful_shutdown=1,
    )
    sock = bind(args.host, args.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"demo-api listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
