"""Live progress of a job: a rich bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..edges.ledger import JobState


class Rate:
    """Pages/s and bytes/s over a sliding window of samples."""

    def __init__(self, window_seconds: float = 10.0):
        self.window = window_seconds
        self.samples: deque[tuple[float, int, int]] = deque()

    def add(self, when: float, pages: int, raw_bytes: int) -> None:
        self.samples.append((when, pages, raw_bytes))
        while len(self.samples) > 2 and when - self.samples[0][0] > self.window:
            self.samples.popleft()

    def per_second(self) -> tuple[float, float]:
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, p0, b0), (t1, p1, b1) = self.samples[0], self.samples[-1]
        span = max(t1 - t0, 1e-6)
        return (p1 - p0) / span, (b1 - b0) / span


def describe(state: JobState, pages_per_second: float, bytes_per_second: float) -> str:
    done = state.committed + state.failed
    total = f"{state.total:,}{'+' if state.open else ''}"
    remaining = state.total - done
    eta = f"{remaining / pages_per_second:,.0f}s" if pages_per_second > 0 and remaining > 0 \
        else "-"
    return (f"{state.state:<10} pages {state.committed:,}/{total} failed {state.failed:,}"
            f" | {state.raw_bytes / 1e6:,.1f} MB | {pages_per_second:,.1f} pages/s"
            f" {bytes_per_second / 1e6:,.1f} MB/s | ETA {eta}")


class Progress:
    """Call :meth:`update` with each new :class:`JobState`; :meth:`close` at the end."""

    def __init__(self, stream: TextIO | None = None, *, plain_every: float = 5.0):
        self.stream = stream or sys.stderr
        self.rate = Rate()
        self.interactive = self.stream.isatty()
        self.plain_every = plain_every
        self._last_plain = 0.0
        self._live: Live | None = None
        if self.interactive:
            self._live = Live(Text(""), console=Console(file=self.stream), transient=False,
                              auto_refresh=False)
            self._live.start()

    def update(self, state: JobState) -> None:
        now = time.monotonic()
        self.rate.add(now, state.committed + state.failed, state.raw_bytes)
        line = describe(state, *self.rate.per_second())
        if self._live is not None:
            self._live.update(Text(line), refresh=True)
        elif now - self._last_plain >= self.plain_every or state.final:
            self._last_plain = now
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
