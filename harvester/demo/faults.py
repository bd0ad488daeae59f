"""Injected faults: which requests get one, and what the broken response looks like.

A fault rule is a plain dict (it travels as JSON on the command line and
through ``POST /_admin/faults``)::

    {"kind": "status", "status": 503, "retry_after": "2",
     "paths": ["/items"], "pages": [3], "times": 2}

Selection keys (all optional): ``paths`` (default: every path), ``pages``
(page numbers), ``every`` (pages where ``page % every == 0``) and ``times``
(the rule fires for the first ``times`` matching requests of each page, then
that page is served normally; absent means forever). Rules are tried in
order and the first one that still fires wins, so a rule that has used up its
``times`` for a page lets the next rule have a go.

Kinds, and the knobs each reads:

- ``status``: that HTTP ``status`` (default 500), a small JSON error body, and
  ``retry_after`` (seconds or an HTTP-date, sent verbatim) as ``Retry-After``.
- ``reset``: the true ``Content-Length``, then the connection is closed after
  ``after_bytes`` of the body.
- ``short``: the whole body, but a ``Content-Length`` 1024 bytes larger; then
  the connection is closed. A complete JSON value, an incomplete HTTP message.
- ``eof_no_length``: chunked encoding, no ``Content-Length``; the first
  ``after_bytes`` of the body and a clean end of message.
- ``stall``: ``after_bytes`` of the body, then silence for ``seconds``
  (default 5), then the rest.
- ``slow``: the body in ``piece_bytes`` pieces (default 1024) with ``delay``
  seconds (default 0.1) between them.
- ``html``: status 200 with an HTML error page (``text/html``).
- ``invalid_json``: status 200, the page's own content type, the first
  ``after_bytes`` of the body followed by text that is not JSON.
- ``gzip_truncated``: ``Content-Encoding: gzip`` whose stream holds the first
  ``after_bytes`` of the body and then stops: no final block, no trailer.

``after_bytes`` defaults to half the body, at most one chunk (1 MiB), so a
cut in a huge body comes early instead of after gigabytes.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from starlette.responses import Response, StreamingResponse

from harvester.demo.data import CHUNK_BYTES, JSON, Body, encode_json

FAULT_KINDS = frozenset(
    {
        "status",
        "reset",
        "short",
        "eof_no_length",
        "stall",
        "slow",
        "html",
        "invalid_json",
        "gzip_truncated",
    }
)

# Bytes a "short" response claims beyond what it sends.
SHORT_MISSING_BYTES = 1024

HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1>\n"
    b"<p>The upstream server is temporarily unavailable.</p></body></html>\n"
)
NOT_JSON_TAIL = b"<!-- injected fault: this is not JSON -->"


class InjectedAbort(Exception):
    """Raised inside a response stream to make uvicorn drop the connection mid-body."""


class FaultSpecError(ValueError):
    """A fault rule that cannot be understood; the message names the offending key."""


# Numeric knobs of a rule and the smallest value each accepts.
_INT_KNOBS = {"every": 1, "times": 0, "status": 100, "piece_bytes": 1, "after_bytes": 0}
_FLOAT_KNOBS = {"seconds": 0, "delay": 0}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _knob(spec: dict, key: str, type_: type, minimum: float) -> int | float:
    value = spec[key]
    if not (_is_int(value) or (type_ is float and isinstance(value, float))):
        raise FaultSpecError(f"{key} must be a number ({type_.__name__}), got {value!r}")
    if value < minimum:
        raise FaultSpecError(f"{key} must be >= {minimum}, got {value!r}")
    return type_(value)


@dataclass(frozen=True)
class FaultRule:
    """One validated fault rule; its fields mirror the rule dict's keys (see the module doc)."""

    kind: str
    paths: frozenset[str] | None = None
    pages: frozenset[int] | None = None
    every: int | None = None
    times: int | None = None
    status: int = 500
    retry_after: str | None = None
    seconds: float = 5.0
    delay: float = 0.1
    piece_bytes: int = 1024
    after_bytes: int | None = None

    @classmethod
    def parse(cls, spec: object) -> FaultRule:
        """Validate one rule dict; unknown keys and wrong types are errors, not ignored."""
        if not isinstance(spec, dict):
            raise FaultSpecError(f"a fault rule must be an object, got {spec!r}")
        unknown = set(spec) - set(cls.__dataclass_fields__)
        if unknown:
            raise FaultSpecError(f"unknown fault rule key(s): {', '.join(sorted(unknown))}")
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            kinds = ", ".join(sorted(FAULT_KINDS))
            raise FaultSpecError(f"kind must be one of {kinds}, got {kind!r}")

        fields: dict[str, object] = {"kind": kind}
        for key, minimum in _INT_KNOBS.items():
            if key in spec:
                fields[key] = _knob(spec, key, int, minimum)
        for key, minimum in _FLOAT_KNOBS.items():
            if key in spec:
                fields[key] = _knob(spec, key, float, minimum)
        if "paths" in spec:
            paths = spec["paths"]
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise FaultSpecError(f"paths must be a list of strings, got {paths!r}")
            fields["paths"] = frozenset(paths)
        if "pages" in spec:
            pages = spec["pages"]
            if not isinstance(pages, list) or not all(_is_int(p) for p in pages):
                raise FaultSpecError(f"pages must be a list of integers, got {pages!r}")
            fields["pages"] = frozenset(pages)
        if "retry_after" in spec:
            retry_after = spec["retry_after"]
            if not (isinstance(retry_after, (str, float)) or _is_int(retry_after)):
                raise FaultSpecError(f"retry_after must be a string or number, got {retry_after!r}")
            fields["retry_after"] = str(retry_after)
        return cls(**fields)

    def selects(self, path: str, page: int) -> bool:
        """Whether a request for ``page`` of ``path`` is in this rule's scope (``times`` aside)."""
        return (
            (self.paths is None or path in self.paths)
            and (self.pages is None or page in self.pages)
            and (self.every is None or page % self.every == 0)
        )


class FaultBook:
    """The current fault rules and how often each has fired for each page."""

    def __init__(self, specs: list[dict] | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._specs: list[dict] = []
        self._fired: defaultdict[tuple[int, str, int], int] = defaultdict(int)
        if specs:
            self.replace(specs)

    @property
    def specs(self) -> list[dict]:
        return list(self._specs)

    def replace(self, specs: object) -> None:
        """Swap in a new rule list (all or nothing) and start counting afresh."""
        if not isinstance(specs, list):
            raise FaultSpecError(f"fault rules must be a JSON list, got {specs!r}")
        rules = [FaultRule.parse(spec) for spec in specs]
        self._rules, self._specs = rules, list(specs)
        self._fired.clear()

    def clear(self) -> None:
        self.replace([])

    def pick(self, path: str, page: int) -> FaultRule | None:
        """The fault to inject into this request, if any, counted against its rule's ``times``."""
        for index, rule in enumerate(self._rules):
            if not rule.selects(path, page):
                continue
            if rule.times is not None:
                key = (index, path, page)
                if self._fired[key] >= rule.times:
                    continue
                self._fired[key] += 1
            return rule
        return None


def fault_response(
    rule: FaultRule, body: Body, page_headers: dict[str, str] | None = None
) -> Response:
    """The broken response ``rule`` makes of the healthy ``body``.

    Faults that keep the page's shape also keep its ``page_headers`` (a
    ``Link`` header, say); a status or HTML error page does not carry them.
    """
    if rule.kind == "status":
        headers = {"retry-after": rule.retry_after} if rule.retry_after is not None else None
        error = {"error": f"injected fault: HTTP {rule.status}", "status": rule.status}
        return Response(encode_json(error), rule.status, headers, JSON)
    if rule.kind == "html":
        return Response(HTML_ERROR_PAGE, 200, media_type="text/html")

    cut = rule.after_bytes if rule.after_bytes is not None else min(body.length // 2, CHUNK_BYTES)
    cut = min(cut, body.length)
    headers = dict(page_headers or {})
    if rule.kind == "invalid_json":
        return Response(_head(body, cut) + NOT_JSON_TAIL, 200, headers, body.media_type)
    if rule.kind == "gzip_truncated":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip wrapper
        # A sync flush makes everything so far decodable but never ends the stream.
        cut_short = compressor.compress(_head(body, cut)) + compressor.flush(zlib.Z_SYNC_FLUSH)
        headers["content-encoding"] = "gzip"
        return Response(cut_short, 200, headers, body.media_type)
    if rule.kind == "eof_no_length":
        # No content-length header, so uvicorn switches to chunked encoding.
        return StreamingResponse(_stream(body, cut, _end_cleanly), 200, headers, body.media_type)

    headers["content-length"] = str(body.length)
    if rule.kind == "reset":
        chunks = _stream(body, cut, _abort)
    elif rule.kind == "short":
        headers["content-length"] = str(body.length + SHORT_MISSING_BYTES)
        chunks = _stream(body, body.length, _abort)
    elif rule.kind == "stall":
        chunks = _stream(body, cut, _pause(rule.seconds))
    elif rule.kind == "slow":
        chunks = _drip(body, rule.piece_bytes, rule.delay)
    else:
        raise AssertionError(f"unhandled fault kind {rule.kind!r}")
    return StreamingResponse(chunks, 200, headers, body.media_type)


def _head(body: Body, size: int) -> bytes:
    """The first ``size`` bytes of ``body``, reading only as many chunks as needed."""
    parts: list[bytes] = []
    taken = 0
    for chunk in body.iter_chunks():
        if taken >= size:
            break
        parts.append(chunk[: size - taken])
        taken += len(parts[-1])
    return b"".join(parts)


async def _stream(
    body: Body, cut: int, at_cut: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """Yield ``body``; after ``cut`` bytes, await ``at_cut()`` and stop if it returns False."""
    offset = 0
    cut_done = False
    for chunk in body.iter_chunks():
        end = offset + len(chunk)
        if not cut_done and end >= cut:
            head, chunk = chunk[: cut - offset], chunk[cut - offset :]
            if head:
                yield head
            cut_done = True
            if not await at_cut():
                return
        if chunk:
            yield chunk
        offset = end
    if not cut_done:
        await at_cut()


async def _abort() -> bool:
    # Raising after the response has started makes uvicorn close the
    # connection with the message incomplete; quiet_injected_aborts() keeps
    # this deliberate error out of the log.
    raise InjectedAbort("injected fault: connection dropped mid-body")


async def _end_cleanly() -> bool:
    return False


def _pause(seconds: float) -> Callable[[], Awaitable[bool]]:
    async def pause() -> bool:
        await asyncio.sleep(seconds)
        return True

    return pause


async def _drip(body: Body, piece_bytes: int, delay: float) -> AsyncIterator[bytes]:
    """Yield ``body`` in ``piece_bytes`` pieces with ``delay`` seconds between them."""
    first = True
    for chunk in body.iter_chunks():
        for start in range(0, len(chunk), piece_bytes):
            if not first:
                await asyncio.sleep(delay)
            first = False
            yield chunk[start : start + piece_bytes]


class _DropInjectedAborts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], InjectedAbort))


def quiet_injected_aborts() -> None:
    """Keep uvicorn from logging a traceback for every deliberately dropped connection."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropInjectedAborts) for f in logger.filters):
        logger.addFilter(_DropInjectedAborts())
