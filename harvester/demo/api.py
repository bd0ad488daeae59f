"""The demo API application: paginated endpoints, auth, latency, stats and fault switches.

Endpoints (every body is deterministic; see :mod:`harvester.demo.data`):

- ``GET /items?page&per_page&pages&pad`` and ``POST /items`` (JSON body): page style
- ``GET /offset?offset&limit&total&pad``: offset style
- ``GET /cursor?cursor&per_page&pages&pad&cursor_last&loop_at``: cursor style (``loop_at=K``
  makes page K repeat page 2's cursor)
- ``GET /next?page&per_page&pages&pad&relative&link_host``: next_url style (``link_host``
  puts another host in absolute next links, as an API pointing elsewhere would)
- ``GET /link?page&per_page&pages&pad``: RFC 8288 ``Link`` header
- ``GET /jsonl?page&per_page&pages&pad``: JSON Lines with a ``Link`` header
- ``GET /big?bytes&cursor_last&next_cursor``: one streamed JSON object of exactly ``bytes``
  bytes (``meta.next_cursor`` set to ``next_cursor``; a request with ``cursor`` gets a
  small last page)
- ``/_admin/{stats,reset,faults,health}``: never authenticated, never counted

Hot paths avoid per-request work: page endpoints are plain Starlette routes
(no dependency injection or validation layer), parse the query string once,
and serve cached bytes; only faults and ``/big`` stream.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from harvester.demo.data import (
    JSON,
    NDJSON,
    Body,
    BodyCache,
    big_body,
    decode_cursor,
    encode_cursor,
    encode_json,
    encode_jsonl,
    page_records,
    records,
)
from harvester.demo.faults import (
    FaultBook,
    FaultSpecError,
    fault_response,
    quiet_injected_aborts,
)

ADMIN_PREFIX = "/_admin"
MAX_RECENT_TIMES = 200_000


@dataclass
class DemoConfig:
    """How one demo API instance behaves.

    ``token``: when set, every non-admin request needs ``Authorization: Bearer
    <token>`` or ``?api_key=<token>``. ``latency_ms``: a delay before every
    non-admin response. ``faults``: the initial fault rules (see
    :mod:`harvester.demo.faults`).
    """

    token: str | None = None
    latency_ms: float = 0
    faults: list[dict] = field(default_factory=list)
    # Encoded bodies kept for reuse; bodies over 1 MiB are kept only when this is
    # raised (benchmarks: measure the client, not the API re-encoding 1 MB pages).
    cache_mb: int = 64


class BadRequest(Exception):
    """A request parameter that is missing its mark; answered with 400 and the message."""


class Stats:
    """Request counters for tests and benchmarks (one process, so plain attributes suffice)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_page: Counter[str] = Counter()
        # Requests still running survive a reset, so the peak restarts from them.
        self.max_in_flight = self.in_flight
        self.times: deque[float] = deque(maxlen=MAX_RECENT_TIMES)
        # (monotonic time, path, page, kind) of every fault served, for timing tests.
        self.faults: deque[tuple[float, str, int, str]] = deque(maxlen=MAX_RECENT_TIMES)

    def started(self, path: str) -> None:
        self.requests += 1
        self.by_path[path] += 1
        self.times.append(time.monotonic())
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight

    def finished(self) -> None:
        self.in_flight -= 1

    def page_served(self, path: str, page: int) -> None:
        self.by_page[f"{path}:{page}"] += 1

    def snapshot(self) -> dict:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_page": dict(self.by_page),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "times": list(self.times),
            "faults": list(self.faults),
        }


@dataclass
class DemoState:
    """Everything one app instance keeps between requests."""

    config: DemoConfig
    stats: Stats = field(default_factory=Stats)
    faults: FaultBook = field(default_factory=FaultBook)
    bodies: BodyCache = field(default_factory=BodyCache)


class RequestGate:
    """Pure ASGI middleware: counts, delays and authenticates every non-admin request.

    ``in_flight`` spans the whole exchange, streamed body included, because
    the wrapped app returns only after the last byte has been handed to uvicorn.
    """

    def __init__(self, app: ASGIApp, state: DemoState) -> None:
        self.app = app
        self.stats = state.stats
        self.latency_s = state.config.latency_ms / 1000
        token = state.config.token
        self.bearer = f"Bearer {token}".encode() if token else None
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        self.stats.started(scope["path"])
        try:
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            if self.bearer is not None and not self._authorized(scope):
                denied = Response(
                    encode_json({"error": "missing or wrong token"}),
                    401,
                    {"www-authenticate": "Bearer"},
                    JSON,
                )
                await denied(scope, receive, send)
                return
            await self.app(scope, receive, send)
        finally:
            self.stats.finished()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization" and hmac.compare_digest(value, self.bearer):
                return True
        query_string: bytes = scope["query_string"]
        if b"api_key=" in query_string:
            for name, value in parse_qsl(query_string.decode("latin-1")):
                if name == "api_key" and hmac.compare_digest(value.encode(), self.token):
                    return True
        return False


# ---------------------------------------------------------------- request helpers


def _query(request: Request) -> dict[str, str]:
    """The query parameters in their original order (the last of a repeated name wins)."""
    return dict(parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True))


def _int(params: dict, name: str, default: int, minimum: int = 0, maximum: int = 1 << 40) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise BadRequest(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise BadRequest(f"{name} must be <= {maximum}, got {value}")
    return value


def _flag(params: dict, name: str, default: bool) -> bool:
    return bool(_int(params, name, int(default), 0, 1))


def _paging(params: dict) -> tuple[int, int, int, int]:
    """``(page, per_page, pages, pad)`` of a page-numbered request."""
    return (
        _int(params, "page", 1, minimum=1),
        _int(params, "per_page", 10, minimum=1, maximum=100_000),
        _int(params, "pages", 100),
        _int(params, "pad", 0, maximum=64 << 20),
    )


def _page_url(request: Request, params: dict[str, str], page: int, relative: bool = False) -> str:
    """This request's URL for another ``page``, every other query parameter carried along."""
    target = {**params, "page": str(page)}
    path_and_query = f"{request.scope['path']}?{urlencode(target)}"
    if relative:
        return path_and_query
    # ``link_host`` lets a test point next links at another origin.
    host = (params.get("link_host") or request.headers.get("host")
            or "{}:{}".format(*request.scope["server"]))
    return f"{request.scope['scheme']}://{host}{path_and_query}"


def _link_header(request: Request, params: dict[str, str], page: int, pages: int) -> str:
    """An RFC 8288 ``Link`` header: first, prev, next and last, as far as they exist."""
    links = [(1, "first")]
    if 1 < page <= pages + 1:
        links.append((page - 1, "prev"))
    if page < pages:
        links.append((page + 1, "next"))
    if pages >= 1:
        links.append((pages, "last"))
    return ", ".join(
        f'<{_page_url(request, params, target)}>; rel="{rel}"' for target, rel in links
    )


def _serve(
    state: DemoState, path: str, page: int, body: Body, headers: dict[str, str] | None = None
) -> Response:
    """Answer with ``body``, unless a fault rule picks this request."""
    state.stats.page_served(path, page)
    rule = state.faults.pick(path, page)
    if rule is not None:
        state.stats.faults.append((time.monotonic(), path, page, rule.kind))
        return fault_response(rule, body, headers)
    if body.content is not None:
        return Response(body.content, 200, headers, body.media_type)

    async def chunks():
        for chunk in body.iter_chunks():
            yield chunk

    return StreamingResponse(
        chunks(), 200, {**(headers or {}), "content-length": str(body.length)}, body.media_type
    )


# ---------------------------------------------------------------- the app


def create_app(config: DemoConfig) -> FastAPI:
    """A demo API instance; state (stats, fault counters, body cache) lives in the returned app."""
    cache = BodyCache(config.cache_mb << 20,
                      max_item_bytes=(1 << 20) if config.cache_mb <= 64 else 8 << 20)
    state = DemoState(config, faults=FaultBook(config.faults), bodies=cache)
    # Docs routes are off: Starlette tries routes in order, and every one
    # ahead of the hot paths is a regex match on every request.
    app = FastAPI(title="Harvester demo API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.demo = state
    app.add_middleware(RequestGate, state=state)
    quiet_injected_aborts()

    def cached(key: tuple, build: Callable[[], bytes], media_type: str = JSON) -> Body:
        return Body.in_memory(state.bodies.get(key, build), media_type)

    def items_page(params: dict) -> Response:
        page, per_page, pages, pad = _paging(params)
        body = cached(
            ("items", page, per_page, pages, pad),
            lambda: encode_json(
                {
                    "data": page_records(page, per_page, pages, pad),
                    "meta": {"page": page, "per_page": per_page, "total_pages": pages},
                }
            ),
        )
        return _serve(state, "/items", page, body)

    async def get_items(request: Request) -> Response:
        return items_page(_query(request))

    async def post_items(request: Request) -> Response:
        try:
            payload = json.loads(await request.body() or b"{}")
        except ValueError as error:
            raise BadRequest(f"the request body is not JSON: {error}") from None
        if not isinstance(payload, dict):
            raise BadRequest("the request body must be a JSON object")
        # Query parameters apply to every request; the body overrides them.
        return items_page({**_query(request), **{k: str(v) for k, v in payload.items()}})

    async def get_offset(request: Request) -> Response:
        params = _query(request)
        offset = _int(params, "offset", 0)
        limit = _int(params, "limit", 10, minimum=1, maximum=100_000)
        total = _int(params, "total", 1000)
        pad = _int(params, "pad", 0, maximum=64 << 20)
        body = cached(
            ("offset", offset, limit, total, pad),
            lambda: encode_json(
                {"data": records(offset + 1, min(offset + limit, total), pad), "count": total}
            ),
        )
        return _serve(state, "/offset", offset // limit + 1, body)

    async def get_cursor(request: Request) -> Response:
        params = _query(request)
        try:
            page = decode_cursor(params["cursor"]) if params.get("cursor") else 1
        except ValueError as error:
            raise BadRequest(str(error)) from None
        _, per_page, pages, pad = _paging(params)
        cursor_last = _flag(params, "cursor_last", False)
        # ``loop_at=K``: page K names page 2's cursor again, as a buggy API would.
        loop_at = _int(params, "loop_at", 0)

        def build() -> bytes:
            data = page_records(page, per_page, pages, pad)
            following = 2 if page == loop_at else page + 1
            meta = {"next_cursor": encode_cursor(following) if page < pages else None}
            return encode_json(
                {"data": data, "meta": meta} if cursor_last else {"meta": meta, "data": data}
            )

        return _serve(
            state,
            "/cursor",
            page,
            cached(("cursor", page, per_page, pages, pad, cursor_last, loop_at), build),
        )

    async def get_next(request: Request) -> Response:
        params = _query(request)
        page, per_page, pages, pad = _paging(params)
        relative = _flag(params, "relative", False)
        next_url = _page_url(request, params, page + 1, relative) if page < pages else None
        body = cached(
            ("next", page, per_page, pages, pad, next_url),
            lambda: encode_json(
                {"data": page_records(page, per_page, pages, pad), "next": next_url}
            ),
        )
        return _serve(state, "/next", page, body)

    async def get_link(request: Request) -> Response:
        params = _query(request)
        page, per_page, pages, pad = _paging(params)
        body = cached(
            ("link", page, per_page, pages, pad),
            lambda: encode_json({"data": page_records(page, per_page, pages, pad)}),
        )
        return _serve(
            state, "/link", page, body, {"link": _link_header(request, params, page, pages)}
        )

    async def get_jsonl(request: Request) -> Response:
        params = _query(request)
        page, per_page, pages, pad = _paging(params)
        body = cached(
            ("jsonl", page, per_page, pages, pad),
            lambda: encode_jsonl(page_records(page, per_page, pages, pad)),
            NDJSON,
        )
        return _serve(
            state, "/jsonl", page, body, {"link": _link_header(request, params, page, pages)}
        )

    async def get_redirect(request: Request) -> Response:
        """``/redirect?to=URL&status=307``: a redirect, for the origin checks."""
        params = _query(request)
        state.stats.page_served("/redirect", 1)
        return Response(status_code=_int(params, "status", 307),
                        headers={"location": params.get("to", "/items")})

    async def get_big(request: Request) -> Response:
        params = _query(request)
        size = _int(params, "bytes", 1 << 20)
        if params.get("cursor"):
            # The page a big body's next_cursor points to: small, and the last.
            return _serve(state, "/big", 2, big_body(0, True))
        return _serve(state, "/big", 1, big_body(size, _flag(params, "cursor_last", True),
                                                 params.get("next_cursor") or None))

    # Plain Starlette routes: the handlers read the raw query string
    # themselves, so FastAPI's per-request dependency solving would be pure cost.
    for path, endpoint, methods in (
        ("/items", get_items, ["GET"]),
        ("/items", post_items, ["POST"]),
        ("/big", get_big, ["GET"]),
        ("/redirect", get_redirect, ["GET"]),
        ("/cursor", get_cursor, ["GET"]),
        ("/offset", get_offset, ["GET"]),
        ("/next", get_next, ["GET"]),
        ("/link", get_link, ["GET"]),
        ("/jsonl", get_jsonl, ["GET"]),
    ):
        app.add_route(path, endpoint, methods=methods, include_in_schema=False)

    @app.exception_handler(BadRequest)
    @app.exception_handler(FaultSpecError)
    async def bad_request(request: Request, error: Exception) -> Response:
        return Response(encode_json({"error": str(error)}), 400, media_type=JSON)

    @app.get(f"{ADMIN_PREFIX}/health")
    async def health() -> dict:
        return {"ok": True}

    @app.get(f"{ADMIN_PREFIX}/stats")
    async def stats() -> Response:
        return Response(encode_json(state.stats.snapshot()), media_type=JSON)

    @app.post(f"{ADMIN_PREFIX}/reset")
    async def reset_stats() -> dict:
        state.stats.reset()
        return {"ok": True}

    @app.get(f"{ADMIN_PREFIX}/faults")
    async def list_faults() -> list[dict]:
        return state.faults.specs

    @app.post(f"{ADMIN_PREFIX}/faults")
    async def replace_faults(request: Request) -> dict:
        try:
            rules = json.loads(await request.body())
        except ValueError as error:
            raise BadRequest(f"the fault rules are not JSON: {error}") from None
        state.faults.replace(rules)
        return {"ok": True, "rules": len(rules)}

    @app.delete(f"{ADMIN_PREFIX}/faults")
    async def clear_faults() -> dict:
        state.faults.clear()
        return {"ok": True, "rules": 0}

    return app
