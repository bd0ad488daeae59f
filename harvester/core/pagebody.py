"""One response body into output lines, while it streams, in constant memory.

Every chunk goes three ways at once: to ijson (:class:`~harvester.core.body.BodyInspector`),
which proves the body complete and valid; to the byte scanner
(:class:`~harvester.core.scan.JsonScanner`) when records or pagination values are
needed; and, transformed, to the page's gzip member via ``write``:

- pages mode: one line ``{"page":…,"body":<the body>}``; a JSON Lines body
  becomes the array of its lines;
- records mode: one line per record at ``records_path``, verbatim; for a JSON
  Lines body, one line per line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidJSON, RecordsNotFound
from .body import BodyInspector
from .scan import WHITESPACE, JsonScanner, one_line

_BOM = b"\xef\xbb\xbf"
JSON_LINES_TYPES = frozenset({"application/x-ndjson", "application/jsonl",
                              "application/x-jsonlines", "application/jsonlines",
                              "application/json-lines", "application/x-json-lines"})


def is_json_lines(content_type: str | None, body_format: str = "auto") -> bool:
    """JSON Lines by the job's ``body_format``, or (auto) by the Content-Type."""
    if body_format != "auto":
        return body_format == "jsonl"
    return (content_type or "").split(";")[0].strip().lower() in JSON_LINES_TYPES


# What a JSON value (or a JSON Lines line) can start with.
_JSON_START = frozenset(b'{["-0123456789tfn')


def printable_prefix(data: bytes, limit: int = 60) -> str:
    """The start of a body for a message: text as text, anything else as '.'."""
    text = data[:limit].decode("utf-8", "replace")
    shown = "".join(c if c.isprintable() and c != "\ufffd" else "." for c in text)
    return shown + ("..." if len(data) > limit else "")


@dataclass(frozen=True)
class BodyResult:
    values: dict[str, Any]
    records: int | None  # counted when asked for (records mode, stop_on_empty)
    lines: int  # lines written to the output


class _LineSplitter:
    """Non-blank lines of a JSON Lines body, streamed piece by piece."""

    def __init__(self, on_piece: Callable[[bytes, bool], None], on_end: Callable[[], None]):
        self.on_piece = on_piece  # (piece, first piece of its line)
        self.on_end = on_end
        self.in_line = False
        self.lines = 0

    def feed(self, chunk: bytes) -> None:
        segments = chunk.split(b"\n")
        for index, segment in enumerate(segments):
            ends = index < len(segments) - 1
            if not self.in_line:
                segment = segment.lstrip(WHITESPACE)
                if segment:
                    self.in_line = True
                    self.on_piece(segment, True)
            elif segment:
                self.on_piece(segment, False)
            if ends and self.in_line:
                self.end_line()

    def end_line(self) -> None:
        self.in_line = False
        self.lines += 1
        self.on_end()

    def finish(self) -> None:
        if self.in_line:
            self.end_line()


class PageBody:
    """Feed it the decoded chunks of one response; :meth:`finish` closes the output."""

    def __init__(self, *, write: Callable[[bytes], None], records_mode: bool,
                 records_path: str | None, value_paths: list[str], count_records: bool,
                 json_lines: bool, line_prefix: bytes, content_type: str | None = None):
        self.write = write
        self.content_type = content_type
        self.records_mode = records_mode
        self.json_lines = json_lines
        self.count_records = count_records or records_mode
        self._first_chunk = True
        self._scanner: JsonScanner | None = None
        self._lines: _LineSplitter | None = None
        if json_lines:
            # Each line is checked on its own: one JSON value per line, no more.
            self._validator: Any = None
            self._line_check: BodyInspector | None = None
            self._lines = _LineSplitter(self._jsonl_piece, self._jsonl_end)
            self._records_seen = 0
            if not records_mode:
                write(line_prefix + b"[")
        else:
            self._validator = BodyInspector()
            wants_records = self.count_records and records_path is not None
            if value_paths or wants_records:
                self._scanner = JsonScanner(
                    records_path=records_path if wants_records else None,
                    value_paths=value_paths,
                    on_record=self._record_piece if records_mode else None,
                    on_lines=self._record_lines if records_mode else None)
            if not records_mode:
                write(line_prefix)
        self._records_path = records_path

    # ------------------------------------------------------------- feeding

    def feed(self, chunk: bytes) -> None:
        if self._first_chunk:
            chunk = chunk.removeprefix(_BOM)
            if chunk.strip(WHITESPACE):
                self._first_chunk = False
                self._check_start(chunk)
        if not chunk:
            return
        if self._lines is not None:
            self._lines.feed(chunk)
            return
        self._validator.feed(chunk)
        if self._scanner is not None:
            self._scanner.feed(chunk)
        if not self.records_mode:
            self.write(one_line(chunk))

    def _check_start(self, chunk: bytes) -> None:
        """An HTML error page or a binary body is named as such, by its Content-Type."""
        first = chunk.lstrip(WHITESPACE)[:1]
        if first and first[0] not in _JSON_START:
            kind = "".join(c if c.isprintable() else "?" for c in
                           (self.content_type or "no Content-Type"))[:80]
            raise InvalidJSON(f"body is not JSON (Content-Type: {kind}); it starts with"
                              f" {printable_prefix(chunk.lstrip(WHITESPACE))!r}")

    def finish(self) -> BodyResult:
        if self._lines is not None:
            self._lines.finish()
            if not self.records_mode:
                self.write(b"]}\n")
            count = self._lines.lines
            return BodyResult(values={}, records=count,
                              lines=count if self.records_mode else 1)
        values = self._validator.finish()
        records = None
        if self._scanner is not None:
            values = self._scanner.finish()
            if self._scanner.records_path is not None:
                if not self._scanner.records_array_seen:
                    raise RecordsNotFound(self._scanner.records_problem())
                records = self._scanner.records
        if not self.records_mode:
            self.write(b"}\n")
            return BodyResult(values=values, records=records, lines=1)
        return BodyResult(values=values, records=records, lines=records or 0)

    # ------------------------------------------------------------- writing

    def _record_piece(self, piece: bytes, done: bool) -> None:
        if piece:
            self.write(one_line(piece))
        if done:
            self.write(b"\n")

    def _record_lines(self, data: bytes, count: int) -> None:
        self.write(data)

    def _jsonl_piece(self, piece: bytes, first: bool) -> None:
        if first:
            self._line_check = BodyInspector()
            if not self.records_mode and self._records_seen:
                self.write(b",")
        self._line_check.feed(piece)
        self.write(one_line(piece))

    def _jsonl_end(self) -> None:
        self._line_check.finish()
        self._records_seen += 1
        if self.records_mode:
            self.write(b"\n")
