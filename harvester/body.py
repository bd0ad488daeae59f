"""Checking a response body while it streams: complete, valid JSON, and the
few values pagination needs, read from the same chunks that go to disk.

Built on ijson's C (yajl2) backend. With no paths to read it only asks for
the cheap "basic" events and throws them away in C (``len`` is the sink), so
validation costs about 10 ms per MB; with paths it tracks prefixes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ijson

from .errors import InvalidJSON

_SCALAR_EVENTS = frozenset({"string", "number", "boolean", "null"})


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

    def __init__(self, paths: Iterable[str] = ()):
        paths = tuple(paths)
        self._values = _PathValues(paths) if paths else None
        if self._values is None:
            self._parser = ijson.basic_parse_coro(_DiscardEvents())
        else:
            self._parser = ijson.parse_coro(self._values, use_float=False)
        self._fed = 0

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._fed += len(chunk)
        try:
            self._parser.send(chunk)
        except ijson.JSONError as exc:
            raise InvalidJSON(f"body is not valid JSON: {_first_line(exc)}") from None

    def finish(self) -> dict[str, Any]:
        if self._fed == 0:
            raise InvalidJSON("body is empty")
        try:
            self._parser.close()
        except ijson.JSONError as exc:
            raise InvalidJSON(f"body is not complete, valid JSON: {_first_line(exc)}") from None
        return dict(self._values.values) if self._values else {}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
