"""The HTTP service (``harvest serve``): the Python API over HTTP, and the dashboard.

Every route but ``/healthz`` needs the token (``HARVEST_API_TOKEN``), as
``Authorization: Bearer TOKEN`` or, for the dashboard in a browser, the
``harvest_token`` cookie that ``GET /?token=TOKEN`` sets (HttpOnly, SameSite=Strict,
so no other site can make a browser use it). Routes are thin: decode, call
:class:`~harvester.client.Harvester`, map the project's errors to statuses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Iterator
from http.cookies import CookieError, SimpleCookie
from importlib.resources import files
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..client import Harvester, Job
from ..errors import (
    BrokerUnavailable,
    HarvesterError,
    JobNotFound,
    JobSpecError,
    JobStateError,
    OutputDirError,
    OutputError,
)
from .events import ProgressStream
from .metrics import JobCollector

COOKIE = "harvest_token"
POLL_SECONDS = 0.5
OPEN_PATHS = ("/healthz",)
MAX_JOB_BODY = 1 << 20


def _status_for(exc: HarvesterError) -> int:
    if isinstance(exc, JobNotFound):
        return 404
    if isinstance(exc, JobSpecError):
        return 422
    if isinstance(exc, (JobStateError, OutputDirError, OutputError)):
        return 409
    if isinstance(exc, BrokerUnavailable):
        return 503
    return 500


def _error_body(exc: HarvesterError) -> dict[str, Any]:
    body: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, JobSpecError):
        body["key"] = exc.key
    if isinstance(exc, JobStateError):
        body["state"] = exc.state
    return body


class TokenGate:
    """ASGI middleware: 401 unless the request carries the token (header or cookie).
    Pure ASGI, so streaming responses pass through untouched."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"error": "Unauthorized", "message": "a bearer token is"
                                 " required (HARVEST_API_TOKEN)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _allowed(self, scope: dict) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                if hmac.compare_digest(value[7:].strip(), self.token):
                    return True
            elif name == b"cookie":
                # SimpleCookie undoes the quoting set_cookie applies to a token with '/'
                # or '=' in it.
                jar = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except CookieError:
                    continue
                morsel = jar.get(COOKIE)
                if morsel is not None and hmac.compare_digest(morsel.value.encode("latin-1"),
                                                              self.token):
                    return True
        query = scope.get("query_string", b"")
        # The dashboard's first visit: GET /?token=... (answered by setting the cookie).
        if scope["path"] == "/" and scope["method"] == "GET":
            for part in query.split(b"&"):
                key, _, value = part.partition(b"=")
                if key == b"token" and hmac.compare_digest(unquote_to_bytes(value.replace(
                        b"+", b" ")), self.token):
                    return True
        return False


def create_app(harvester: Harvester, token: str) -> Any:
    """The service as an ASGI app (FastAPI inside the token gate)."""
    if not token:
        raise ValueError("a token is required")
    app = FastAPI(title="Harvester", version="1",
                  description="Submit, follow and read harvest jobs. Every route but"
                              " /healthz needs `Authorization: Bearer $HARVEST_API_TOKEN`.")
    registry = CollectorRegistry()
    registry.register(JobCollector(harvester))

    @app.exception_handler(HarvesterError)
    async def harvester_error(request: Request, exc: HarvesterError) -> JSONResponse:
        return JSONResponse(_error_body(exc), status_code=_status_for(exc))

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            harvester.ping()
        except BrokerUnavailable as exc:
            return JSONResponse({"ok": False, "redis": str(exc)}, status_code=503)
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(request: Request) -> Response:
        given = request.query_params.get("token")
        if given:
            # Trade the token in the URL for a cookie, and drop it from the address bar.
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        page = (files("harvester.service") / "dashboard.html").read_text()
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.post("/jobs", status_code=201)
    async def submit(request: Request) -> dict[str, Any]:
        """A job as TOML (any content type but JSON) or as JSON (the same sections),
        validated as the CLI validates a job file: 422 names the key."""
        body = await request.body()
        if len(body) > MAX_JOB_BODY:
            raise JobSpecError("a job is at most 1 MiB", path="<request>")
        if "json" in request.headers.get("content-type", ""):
            try:
                document = json.loads(body)
            except ValueError as exc:
                raise JobSpecError(f"not valid JSON: {exc}", path="<request>") from None
            job = Job.from_dict(document, source="<request>")
        else:
            job = Job.from_toml_text(body, source="<request>")
        job_id = await asyncio.to_thread(harvester.submit, job)
        return {"job_id": job_id, "status": (await asyncio.to_thread(
            harvester.status, job_id)).to_dict()}

    @app.get("/jobs")
    def jobs(limit: int = 50) -> list[dict[str, Any]]:
        return [status.to_dict() for status in harvester.jobs(max(1, min(limit, 500)))]

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return harvester.status(job_id).to_dict()

    @app.post("/jobs/{job_id}/retry")
    def retry(job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "queued": harvester.retry(job_id)}

    @app.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict[str, Any]:
        return {"job_id": job_id, "state": harvester.cancel(job_id)}

    @app.get("/jobs/{job_id}/failed")
    def failed(job_id: str) -> list[dict[str, Any]]:
        return harvester.failures(job_id)

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        """Progress as Server-Sent Events until the job is final (see
        :mod:`harvester.service.events`); resumable with ``Last-Event-ID``."""
        await asyncio.to_thread(harvester.status, job_id)  # 404 before the stream starts
        stream = ProgressStream(request.headers.get("last-event-id"))

        async def generate() -> Any:
            yield stream.first()
            while not stream.ended:
                status = await asyncio.to_thread(harvester.status, job_id)
                for event in stream.feed(status, time.time()):
                    yield event
                if not stream.ended:
                    await asyncio.sleep(POLL_SECONDS)

        return StreamingResponse(generate(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    def _output_response(job_id: str, request: Request, kind: str) -> Response:
        output = harvester.output(job_id)
        lines: Iterator[bytes]
        gzip_ok = "gzip" in request.headers.get("accept-encoding", "")
        if kind == "pages" and output.mode != "pages":
            raise OutputError(f"job {job_id} was harvested in records mode: its output keeps"
                              " records, not pages", job_id=job_id)
        if output.mode == kind:
            if gzip_ok:
                # The parts are one gzip stream of exactly these lines: sent as stored.
                return StreamingResponse(output.compressed(), media_type="application/jsonl",
                                         headers={"Content-Encoding": "gzip",
                                                  "Content-Length": str(output.compressed_bytes)})
            lines = output.decompressed()
            return StreamingResponse(lines, media_type="application/jsonl",
                                     headers={"Content-Length": str(output.raw_bytes)})
        # Records of a pages-mode job: read out of each page body, one at a time.
        records = output.records()
        lines = (json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                 for record in records)
        return StreamingResponse(_batched(lines), media_type="application/jsonl")

    @app.get("/jobs/{job_id}/records")
    def records(job_id: str, request: Request) -> Response:
        """Every record of a final job as JSON Lines, streamed in constant memory; the
        stored gzip as is (``Content-Encoding: gzip``) when the client accepts it."""
        return _output_response(job_id, request, "records")

    @app.get("/jobs/{job_id}/pages")
    def pages(job_id: str, request: Request) -> Response:
        """Every page of a final pages-mode job as JSON Lines, streamed likewise."""
        return _output_response(job_id, request, "pages")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return TokenGate(app, token)


def _batched(lines: Iterator[bytes], size: int = 64 * 1024) -> Iterator[bytes]:
    buffer: list[bytes] = []
    held = 0
    for line in lines:
        buffer.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(buffer)
            buffer, held = [], 0
    if buffer:
        yield b"".join(buffer)
