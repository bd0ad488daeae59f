"""The progress stream of one job as Server-Sent Events: pure, no I/O.

:class:`ProgressStream` turns successive :class:`~harvester.client.JobStatus`
readings into events; the route only reads the ledger and sends what it yields.

Each event's id is ``<ms>.<state>``: the time of the reading and the job's state
then. A client that reconnects sends it back as ``Last-Event-ID``; the stream
resumes with a fresh snapshot, plus a ``state`` event if the state changed while
the client was away, so a reconnect never misses a state change. Events::

    progress  {job status..., "rate_pages", "rate_bytes", "eta_seconds"}
    state     {"state", "previous"}        whenever the state changes
    end       {"state"}                    the job is final; the stream ends
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..client import JobStatus
from ..terminal.progress import Rate

KEEPALIVE_SECONDS = 15.0
RECONNECT_MS = 2000


def sse(event: str | None, data: Any, *, event_id: str | None = None) -> bytes:
    """One event in the text/event-stream format (data as one line of JSON)."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


def parse_event_id(value: str | None) -> tuple[int, str] | None:
    """``"1796347597840.running"`` -> ``(1796347597840, "running")``; None if not ours."""
    if not value:
        return None
    stamp, _, state = value.partition(".")
    if not stamp.isdigit() or not state.isalpha() or len(state) > 20:
        return None
    return int(stamp), state


class ProgressStream:
    """The events to send for each new reading of a job's status."""

    def __init__(self, last_event_id: str | None = None):
        resumed = parse_event_id(last_event_id)
        self.previous_state = resumed[1] if resumed else None
        self.rate = Rate()
        self._last: tuple[Any, ...] | None = None
        self._last_sent_at: float | None = None
        self.ended = False

    def first(self) -> bytes:
        """Sent once, before any event: how long a client waits to reconnect."""
        return f"retry: {RECONNECT_MS}\n\n".encode()

    def feed(self, status: JobStatus, now: float) -> Iterator[bytes]:
        """Events for a reading at ``now`` (epoch seconds): a progress event when
        anything moved, a state event on a change, and the end once the job is final."""
        if self.ended:
            return
        self.rate.add(now, status.committed + status.failed, status.raw_bytes)
        event_id = f"{int(now * 1000)}.{status.state}"
        if self.previous_state is not None and status.state != self.previous_state:
            yield sse("state", {"state": status.state, "previous": self.previous_state},
                      event_id=event_id)
        self.previous_state = status.state
        snapshot = (status.state, status.committed, status.failed, status.total,
                    status.raw_bytes, status.paused, status.in_flight)
        if snapshot != self._last:
            self._last = snapshot
            self._last_sent_at = now
            yield sse("progress", self._progress(status, now), event_id=event_id)
        elif self._last_sent_at is not None and now - self._last_sent_at >= KEEPALIVE_SECONDS:
            self._last_sent_at = now
            yield b": keepalive\n\n"  # a comment: proxies keep the connection open
        if status.final:
            self.ended = True
            yield sse("end", {"state": status.state}, event_id=event_id)

    def _progress(self, status: JobStatus, now: float) -> dict[str, Any]:
        pages_per_second, bytes_per_second = self.rate.per_second()
        if pages_per_second == 0 and status.committed + status.failed and not status.final:
            # A stream's first reading: the job's average rate so far.
            elapsed = max(now - status.created_at, 1e-3)
            pages_per_second = (status.committed + status.failed) / elapsed
            bytes_per_second = status.raw_bytes / elapsed
        remaining = status.total - status.committed - status.failed
        eta = remaining / pages_per_second if pages_per_second > 0 and remaining > 0 and \
            status.total_known and not status.final else None
        return {**status.to_dict(), "rate_pages": round(pages_per_second, 3),
                "rate_bytes": round(bytes_per_second, 1),
                "eta_seconds": None if eta is None else round(eta, 1)}
