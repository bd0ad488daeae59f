"""Checking a response body while it streams: complete, valid JSON, read from the
same chunks that go to disk.

Two validators, one verdict. The project's own C extension
(``harvester/core/_jsoncheck.c``, built by the install when a compiler is there)
checks the grammar and strict UTF-8 at ~350 MB/s, holding nothing but a stack
of open containers. Without it (or with ``HARVEST_JSON_VALIDATOR=ijson``),
ijson's yajl2 backend does the same at ~40 MB/s; yajl holds each token whole,
so :class:`TokenGuard` fails a body with one over ``MAX_TOKEN_BYTES``. A
differential test holds the C validator to a strict parser's verdict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import ijson

from ..errors import InvalidJSON, PageTooLarge

try:
    from ._jsoncheck import JsonError as _NativeError
    from ._jsoncheck import Validator as _NativeValidator
except ImportError:  # built without a C compiler: ijson alone
    _NativeValidator = None
    _NativeError = ValueError
# Which validator checks bodies: "c" (the default, when built) or "ijson".
NATIVE = _NativeValidator is not None and \
    os.environ.get("HARVEST_JSON_VALIDATOR", "c").lower() != "ijson"

_SCALAR_EVENTS = frozenset({"string", "number", "boolean", "null"})
# yajl holds one token (a string, a key, a number) whole until it ends: a 1 GB key
# would take 2 GB. Longer tokens fail the page instead; memory stays flat.
MAX_TOKEN_BYTES = 8 << 20
_ESCAPE = re.compile(rb"\\.", re.S)
_NUMBER_CHARS = b"0123456789+-.eE"


class TokenGuard:
    """Fails a body holding a JSON string, key or number over ``limit`` bytes.

    It reads each chunk at C speed (counting quotes, stripping digits): escapes
    are blanked out length for length, so the quotes left are exactly those that
    open and close strings, and their parity says whether a chunk ends inside one.
    It judges only length; ijson judges validity. A token that starts and ends in
    one chunk is bounded by the chunk, so ``limit`` must exceed the chunk size.
    """

    def __init__(self, limit: int = MAX_TOKEN_BYTES):
        self.limit = limit
        self.in_string = False
        self.string_run = 0  # bytes of the string still open at the last chunk's end
        self.number_run = 0  # number characters ending the last chunk
        self.escaped_first = False  # the last chunk ended in a lone backslash

    def feed(self, chunk: bytes) -> None:
        n = len(chunk)
        view = chunk
        if self.escaped_first or b"\\" in chunk:
            if self.escaped_first:
                view = b"." + view[1:]
            view = _ESCAPE.sub(b"..", view)
            self.escaped_first = view.endswith(b"\\")
        quotes = view.count(b'"')
        if quotes == 0:
            if self.in_string:
                self.string_run += n
                self._check(self.string_run, "string")
        else:
            if self.in_string:
                self._check(self.string_run + view.find(b'"'), "string")
            if (quotes % 2 == 1) != self.in_string:
                self.in_string = True
                self.string_run = n - view.rfind(b'"') - 1
            else:
                self.in_string = False
        lead = n - len(chunk.lstrip(_NUMBER_CHARS))
        if lead == n:
            self.number_run += n
            self._check(self.number_run, "number")
        else:
            self._check(self.number_run + lead, "number")
            self.number_run = n - len(chunk.rstrip(_NUMBER_CHARS))

    def _check(self, run: int, what: str) -> None:
        if run > self.limit:
            raise PageTooLarge(f"the body holds a JSON {what} (or key) over"
                               f" {self.limit >> 20} MiB, which cannot be checked in"
                               " constant memory")


class _DiscardEvents:
    """A coroutine-like sink whose ``send`` is a C builtin: events cost no Python frame."""

    send = len

    def close(self) -> None:
        pass


class _PathValues:
    """Keeps the first scalar seen at each wanted dotted path."""

    def __init__(self, paths: Iterable[str]):
        self.wanted = frozenset(paths)
        self.values: dict[str, Any] = {}

    def send(self, event: tuple[str, str, Any]) -> None:
        prefix, kind, value = event
        if prefix in self.wanted and kind in _SCALAR_EVENTS and prefix not in self.values:
            self.values[prefix] = value

    def close(self) -> None:
        pass


class BodyInspector:
    """Feed it every chunk of a body; :meth:`finish` proves it complete and valid.

    ``paths`` are dotted paths (``meta.total_pages``) whose scalar values
    :meth:`finish` returns; a path absent from the body is absent from the result.
    """

    def __init__(self, paths: Iterable[str] = (), *, native: bool | None = None):
        paths = tuple(paths)
        self._values = _PathValues(paths) if paths else None
        use_native = (NATIVE if native is None else native) and _NativeValidator is not None
        # The C validator reads no values: paths always go through ijson.
        self._native = _NativeValidator() if use_native and not paths else None
        self._guard = None if self._native is not None else TokenGuard()
        if self._native is not None:
            self._parser = None
        elif self._values is None:
            self._parser = ijson.basic_parse_coro(_DiscardEvents())
        else:
            self._parser = ijson.parse_coro(self._values, use_float=False)
        self._fed = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._fed += len(chunk)
        if self._native is not None:
            try:
                self._native.feed(chunk)
            except _NativeError as exc:
                raise InvalidJSON(f"body is not valid JSON: {exc}") from None
            return
        self._guard.feed(chunk)
        try:
            self._parser.send(chunk)
        except ijson.JSONError as exc:
            raise InvalidJSON(f"body is not valid JSON: {_first_line(exc)}") from None

    def finish(self) -> dict[str, Any]:
        if self._fed == 0:
            raise InvalidJSON("body is empty")
        if self._native is not None:
            try:
                self._native.finish()
            except _NativeError as exc:
                raise InvalidJSON(f"body is not complete, valid JSON: {exc}") from None
            return {}
        try:
            self._parser.close()
        except ijson.JSONError as exc:
            raise InvalidJSON(f"body is not complete, valid JSON: {_first_line(exc)}") from None
        return dict(self._values.values) if self._values else {}


def _first_line(exc: Exception) -> str:
    """yajl's message, printable and bounded: it quotes the body around the error."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return "".join(c if c.isprintable() else "." for c in line)[:200]
