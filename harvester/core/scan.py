"""A streaming byte scanner for JSON bodies: records verbatim, values at paths.

ijson (see :mod:`harvester.core.body`) proves a body is valid JSON, but it cannot say
*where* in the bytes a value lies. Records mode must write each record exactly
as sent (numbers, escapes and unicode untouched), and pagination needs a cursor
that may sit after 200 MB of records. :class:`JsonScanner` walks the same chunks
once, keeping only a few bytes of state across chunk boundaries:

- inside the array at ``records_path`` it hands each element's bytes, verbatim,
  to ``on_record`` piece by piece, then ends the record, so one record of any
  size never sits in memory;
- the value at each wanted path (``meta.next_cursor``) is captured (up to
  64 KiB) and decoded; a larger one is reported as :class:`Unreadable`, never
  as absent (a next URL dropped for its size would end a chain early);
- every other subtree is skipped. A shallow container (up to six levels of
  nesting) is matched whole by one C-level regular expression, which is what
  keeps typical records fast; anything else is walked token by token.

The scanner assumes valid JSON and never judges it: the ijson check running on
the same chunks does. On invalid input its output is meaningless, and the page
is discarded anyway.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import InvalidJSON

WHITESPACE = b" \t\r\n"
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
_STRUCTURE = re.compile(rb'[\[\]{}"]')
_SCALAR_END = re.compile(rb"[,\]}]")
_NON_WS = re.compile(rb"[^ \t\r\n]")

_STR = rb'"(?:[^"\\]++|\\.)*+"'
_FLAT = rb'[^"\[\]{}]++'


def _nest(inner: bytes) -> bytes:
    body = rb"(?:" + _FLAT + rb"|" + _STR + (rb"|" + inner if inner else b"") + rb")*+"
    return rb"(?:\{" + body + rb"\}|\[" + body + rb"\])"


# A whole container nested at most six deep, matched in C in one call. Depth costs
# no matching speed (measured: 47 MB/s at 3 levels and at 8), only compile time
# (15 ms at 6, once per process); records of real APIs are often 4-5 deep, and
# each level past this falls back to a token walk at ~4 MB/s.
_CONTAINER_DEPTH = 6
_CONTAINER = b""
for _ in range(_CONTAINER_DEPTH):
    _CONTAINER = _nest(_CONTAINER)
_SHALLOW_CONTAINER = re.compile(_CONTAINER, re.S)
# A run of such containers (or strings) inside an array, each followed by a comma.
_ELEMENT = rb"(?:" + _CONTAINER + rb"|" + _STR + rb")"
_ELEMENT_RUN = re.compile(rb"(?:[ \t\r\n]*" + _ELEMENT + rb"[ \t\r\n]*,)++", re.S)
# One such element and its comma, the element as group 1.
_ELEMENT_COMMA = re.compile(rb"[ \t\r\n]*(" + _ELEMENT + rb")[ \t\r\n]*,", re.S)
# A stretch of an array holding only numbers and literals (no string, no container).
_SCALARS = re.compile(rb'[^"\[\]{}]++')
MAX_CAPTURE = 64 * 1024
# Raw CR and LF can only be insignificant whitespace in valid JSON: a space keeps a
# record on one line without changing what it means.
ONE_LINE = bytes.maketrans(b"\r\n", b"  ")


def one_line(data: bytes) -> bytes:
    """``data`` with its raw CR and LF made spaces. Most APIs send compact JSON: two
    memchr scans then find neither and the bytes go on uncopied (a translate of a
    1 MB body costs as much CPU as validating it)."""
    if b"\n" in data or b"\r" in data:
        return data.translate(ONE_LINE)
    return data


class Unreadable:
    """A wanted value that is there but could not be read (too large, undecodable)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unreadable({self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unreadable) and other.reason == self.reason

    __hash__ = None  # type: ignore[assignment]


def split_path(path: str) -> tuple[str, ...]:
    return tuple(path.split(".")) if path else ()


class _Frame:
    __slots__ = ("kind", "path", "key", "expect_key")

    def __init__(self, kind: int, path: tuple[str, ...] | None):
        self.kind = kind  # ord("{") or ord("[")
        self.path = path  # the path of this container; None inside skipped subtrees
        self.key: str | None = None  # the key whose value comes next (objects)
        self.expect_key = kind == 0x7B


class JsonScanner:
    """Feed chunks; records go to ``on_record``; :meth:`finish` returns path values.

    ``on_record(piece, done)`` receives a record's bytes in one or more pieces;
    ``done`` is True on the record's last call (with a possibly empty piece).
    ``on_lines(data, count)``, if given, takes runs of whole records in one call
    (an array of a million tiny records must not cost a million Python calls):
    ``count`` records, each followed by ``\n``, any raw CR/LF inside them (only
    ever whitespace) turned into a space; without it each goes to ``on_record``.
    """

    def __init__(self, *, records_path: str | None = None, value_paths: Iterable[str] = (),
                 on_record: Callable[[bytes, bool], None] | None = None,
                 on_lines: Callable[[bytes, int], None] | None = None):
        self.records_path = split_path(records_path) if records_path is not None else None
        self.value_paths = {split_path(p): p for p in value_paths}
        self.on_record = on_record
        self.on_lines = on_lines
        self.values: dict[str, Any] = {}
        self.records = 0
        self.records_array_seen = False
        # For a body without the records array: the keys of the objects along its
        # path, and what sat at the path instead of an array.
        self._keys_along: dict[tuple[str, ...], list[str]] = {}
        self._found_instead: str | None = None
        self._interesting = set()
        for path in [*self.value_paths, *([self.records_path] if self.records_path is not None else [])]:
            for cut in range(len(path) + 1):
                self._interesting.add(path[:cut])
        self._stack: list[_Frame] = []
        self._started = False
        # The value being consumed right now (skipped, emitted or captured).
        self._value: _Value | None = None
        self._key_parts: list[bytes] | None = None
        self._key_bytes = 0
        self._key_escape = False

    # ----------------------------------------------------------- public API

    def feed(self, chunk: bytes) -> None:
        i, n = 0, len(chunk)
        while i < n:
            if self._value is not None:
                i = self._value.consume(chunk, i)
                if self._value.complete:
                    self._finish_value()
                continue
            if self._key_parts is not None:
                i = self._read_key(chunk, i)
                continue
            match = _NON_WS.search(chunk, i)
            if match is None:
                return
            i = match.start()
            if self._stack and self._stack[-1].kind == 0x5B and chunk[i] not in (0x2C, 0x5D):
                after = self._element_run(chunk, i)
                if after != i:
                    i = after
                    continue
            i = self._structural(chunk, i)

    def finish(self) -> dict[str, Any]:
        if self._value is not None and self._value.scalar:
            self._value.end_of_input()
            self._finish_value()
        if self._stack or self._value is not None or not self._started:
            raise InvalidJSON("body ends inside a JSON value")
        return dict(self.values)

    def records_problem(self) -> str:
        """Why no records array was found, naming what the body holds instead."""
        path = ".".join(self.records_path or ())
        if self._found_instead is not None:
            where = f"at records_path {path!r}" if path else "the body (records_path = '')"
            return f"{where} is {self._found_instead}, not an array"
        deepest = max(self._keys_along, key=len, default=None)
        if deepest is None:
            return f"no array at records_path {path!r}: the body is not an object"
        keys = ", ".join(self._keys_along[deepest]) or "(none)"
        at = f"the object at {'.'.join(deepest)!r}" if deepest else "the body"
        return f"no array at records_path {path!r}; {at} has keys: {keys}"

    # ----------------------------------------------------------- structure

    def _path_of_next_value(self) -> tuple[str, ...] | None:
        """The path of the value that starts next, or None if it cannot matter."""
        if not self._stack:
            return ()
        frame = self._stack[-1]
        if frame.kind == 0x5B or frame.path is None or frame.key is None:
            return None  # array elements (bar records) and opaque subtrees never matter
        return frame.path + (frame.key,)

    def _structural(self, chunk: bytes, i: int) -> int:
        char = chunk[i]
        frame = self._stack[-1] if self._stack else None
        if frame is not None and frame.kind == 0x7B and frame.expect_key:
            if char == 0x22:  # '"' a key begins
                self._key_parts = []
                self._key_bytes = 0
                return i + 1
            if char == 0x7D:  # '}' empty object
                return self._close(i)
            return i + 1  # ',' between members
        if char == 0x3A:  # ':'
            return i + 1
        if char == 0x2C:  # ','
            if frame is not None and frame.kind == 0x7B:
                frame.expect_key = True
                frame.key = None
            return i + 1
        if char in (0x5D, 0x7D):  # ']' '}'
            return self._close(i)
        return self._begin_value(chunk, i)

    def _begin_value(self, chunk: bytes, i: int) -> int:
        self._started = True
        frame = self._stack[-1] if self._stack else None
        in_records = (frame is not None and frame.kind == 0x5B and self.records_path is not None
                      and frame.path == self.records_path)
        path = None if in_records else self._path_of_next_value()
        char = chunk[i]
        container = char in (0x7B, 0x5B)
        if path is not None and path == self.records_path and char != 0x5B \
                and self._found_instead is None:
            self._found_instead = {0x7B: "an object", 0x22: "a string"}.get(
                char, "a number, true, false or null")
        if container and not in_records and path is not None and path in self._interesting:
            self._stack.append(_Frame(char, path))
            if path == self.records_path and char == 0x5B:
                self.records_array_seen = True
            return i + 1
        if path is not None and path in self.value_paths:
            self._value = _Value(capture=True)
            self._value_path = path
            return i
        if container:
            whole = _SHALLOW_CONTAINER.match(chunk, i)
            if whole is not None:  # the common case: one C call for the whole value
                if in_records:
                    self._emit_record(chunk[i:whole.end()], True)
                    self.records += 1
                self._after_value()
                return whole.end()
            if not in_records:
                # Too deep, or running past this chunk: enter it as an opaque frame so
                # its children are skipped one by one, each with the fast path.
                self._stack.append(_Frame(char, None))
                return i + 1
        self._value = _Value(emit=self._emit_record if in_records else None, container_tried=True)
        self._value_path = path
        return i

    def _element_run(self, chunk: bytes, i: int) -> int:
        """Skip (or emit, in the records array) a run of whole elements in C: numbers
        and literals up to the last comma before a string or container, else
        shallow containers and strings each followed by a comma."""
        frame = self._stack[-1]
        in_records = self.records_path is not None and frame.path == self.records_path
        if not in_records and frame.path is not None:
            return i
        if chunk[i] not in (0x7B, 0x5B, 0x22):
            stretch = _SCALARS.match(chunk, i)
            end = chunk.rfind(b",", i, stretch.end()) + 1
            if end <= i:
                return i
            self._started = True
            if in_records:
                # Numbers and literals hold no whitespace: what is left is the records.
                scalars = chunk[i:end].translate(None, WHITESPACE)
                self._emit_lines(scalars.replace(b",", b"\n"), scalars.count(b","))
            return end
        if not in_records:
            run = _ELEMENT_RUN.match(chunk, i)
            if run is None:
                return i
            self._started = True
            return run.end()
        # One C match per record, each starting where the last ended: a single pass
        # (a run match, then finding its elements again, would be two).
        spans, end, match = [], i, _ELEMENT_COMMA.match
        while (element := match(chunk, end)) is not None:
            spans.append(element.span(1))
            end = element.end()
        if not spans:
            return i
        self._started = True
        if self.on_lines is None:
            for start, stop in spans:
                self._emit_record(chunk[start:stop], True)
                self.records += 1
        else:
            # One translate for the whole run; it keeps every offset where it was.
            text = one_line(chunk[i:end])
            records = [text[start - i:stop - i] for start, stop in spans]
            records.append(b"")
            self._emit_lines(b"\n".join(records), len(spans))
        return end

    def _emit_lines(self, data: bytes, count: int) -> None:
        """``count`` whole records, each ending in a newline and free of raw CR/LF."""
        self.records += count
        if self.on_lines is not None:
            self.on_lines(data, count)
        elif self.on_record is not None:
            for record in data.split(b"\n")[:-1]:
                self.on_record(record, True)

    def _close(self, i: int) -> int:
        if not self._stack:
            raise InvalidJSON("unbalanced closing bracket")
        self._stack.pop()
        self._after_value()
        return i + 1

    def _after_value(self) -> None:
        if self._stack and self._stack[-1].kind == 0x7B:
            self._stack[-1].key = None

    def _finish_value(self) -> None:
        value = self._value
        self._value = None
        if value.capture and self._value_path is not None:
            name = self.value_paths[self._value_path]
            if name not in self.values:
                if value.captured is None:
                    self.values[name] = Unreadable(
                        f"{value.seen:,}+ bytes, over the {MAX_CAPTURE // 1024} KiB that a"
                        " cursor, next URL or total may take")
                else:
                    try:
                        self.values[name] = json.loads(bytes(value.captured),
                                                       parse_float=_exact_number)
                    except ValueError:
                        # Invalid JSON fails the page through the ijson check too.
                        self.values[name] = Unreadable("not valid JSON")
        if value.emit is not None:
            self.records += 1
        self._after_value()

    def _emit_record(self, piece: bytes, done: bool) -> None:
        if self.on_record is not None:
            self.on_record(piece, done)

    def _read_key(self, chunk: bytes, i: int) -> int:
        if self._key_escape:
            self._key_parts.append(chunk[i:i + 1])
            self._key_escape = False
            i += 1
        match = _STRING_BODY.match(chunk, i)
        end = match.end()
        self._key_bytes += end - i
        if self._key_bytes <= MAX_CAPTURE:
            self._key_parts.append(chunk[i:end])
        else:
            self._key_parts.clear()  # a key this long matches no path: keep none of it
        if end < len(chunk) and chunk[end] == 0x22:
            raw = b"".join(self._key_parts)
            self._key_parts = None
            frame = self._stack[-1]
            if self._key_bytes > MAX_CAPTURE:
                frame.key = "\x00(a key over 64 KiB)"
            else:
                frame.key = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
            frame.expect_key = False
            if self.records_path is not None and frame.path is not None \
                    and frame.path == self.records_path[:len(frame.path)]:
                keys = self._keys_along.setdefault(frame.path, [])
                if len(keys) < 20:
                    keys.append(frame.key[:60])
            return end + 1
        if end < len(chunk) and chunk[end] == 0x5C:  # a backslash ends the chunk
            self._key_parts.append(chunk[end:end + 1])
            self._key_escape = True
            return end + 1
        return end


class _Value:
    """One JSON value consumed incrementally: skipped, emitted, or captured."""

    __slots__ = ("emit", "capture", "captured", "complete", "depth", "in_string", "escape",
                 "scalar", "started", "container_tried", "seen")

    def __init__(self, *, emit: Callable[[bytes, bool], None] | None = None,
                 capture: bool = False, container_tried: bool = False):
        self.container_tried = container_tried
        self.emit = emit
        self.capture = capture
        self.captured: bytearray | None = bytearray() if capture else None
        self.seen = 0  # bytes of a captured value, kept or not
        self.complete = False
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.scalar = False
        self.started = False

    def _out(self, piece: bytes, done: bool = False) -> None:
        if self.emit is not None and (piece or done):
            self.emit(piece, done)
        if self.capture and piece:
            self.seen += len(piece)
            if self.captured is not None and len(self.captured) + len(piece) > MAX_CAPTURE:
                self.captured = None  # too large to keep: reported as Unreadable
            elif self.captured is not None:
                self.captured += piece

    def end_of_input(self) -> None:
        self._out(b"", True)
        self.complete = True

    def consume(self, chunk: bytes, i: int) -> int:
        n = len(chunk)
        if not self.started:
            self.started = True
            char = chunk[i]
            if char in (0x7B, 0x5B):
                whole = None if self.container_tried else _SHALLOW_CONTAINER.match(chunk, i)
                if whole is not None:
                    self._out(chunk[i:whole.end()], True)
                    self.complete = True
                    return whole.end()
            elif char == 0x22:
                self.in_string = True
                self._out(chunk[i:i + 1])
                i += 1
            else:
                self.scalar = True
        start = i
        if self.scalar:
            end = _SCALAR_END.search(chunk, i)
            stop = end.start() if end else n
            # A number or literal has no inner whitespace; what follows it is not its own.
            piece = chunk[start:stop].translate(None, WHITESPACE)
            if end is None:
                self._out(piece)
                return n
            self._out(piece, True)
            self.complete = True
            return stop
        while i < n:
            if self.in_string:
                if self.escape:
                    self.escape = False
                    i += 1
                    continue
                i = _STRING_BODY.match(chunk, i).end()
                if i >= n:
                    break
                if chunk[i] == 0x5C:  # a lone backslash at the chunk's end
                    self.escape = True
                    i += 1
                    continue
                i += 1  # the closing quote
                self.in_string = False
                if self.depth == 0:
                    self._out(chunk[start:i], True)
                    self.complete = True
                    return i
                continue
            token = _STRUCTURE.search(chunk, i)
            if token is None:
                i = n
                break
            i = token.start()
            char = chunk[i]
            i += 1
            if char == 0x22:
                self.in_string = True
            elif char in (0x7B, 0x5B):
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    self._out(chunk[start:i], True)
                    self.complete = True
                    return i
        self._out(chunk[start:n])
        return n


def _exact_number(text: str) -> Any:
    from decimal import Decimal

    return Decimal(text)
