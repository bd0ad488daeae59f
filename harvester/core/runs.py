"""Runs: how many pages of a fan-out job one task message carries. Pure.

Each Celery message costs a worker ~4.5 ms of CPU whatever the page (receive,
ack, three task events, publishing the next: measured on 10 KB pages), more
than a 10 KB page itself and a third of a 1 MB one. A run of K pages in one
message pays that once, and its pages share one fsync and one commit script.
A run is kept to about a second of work (``TARGET_RUN_SECONDS``): pages that
take longer (a slow API, huge bodies) travel in shorter runs, down to one page
per message, so that a run never holds a thread (and its pages) for long while
other threads idle; a run that finds itself past its budget hands the rest of
its pages back as single-page messages.
Each page of a run keeps its own ledger state, lease, failure record and
retries; a worker that dies mid-run loses only its uncommitted pages.
"""

from __future__ import annotations

from dataclasses import dataclass

# About how long one run should keep its thread (measured: 1 MB pages lose half
# their throughput when they travel one per message, so size alone never splits).
TARGET_RUN_SECONDS = 1.0


def default_run_pages(window: int) -> int:
    """Pages per run for a window of ``window`` pages: window / 32, between 1 and 32,
    so that about 32 runs are in flight, enough to keep 32 threads busy."""
    return max(1, min(32, window // 32))


def split_runs(pages: list[int], run_pages: int) -> list[list[int]]:
    """``pages`` in runs of at most ``run_pages``, as even as possible, in order:
    10 pages at 8 go as 5 + 5, not 8 + 2, so no run waits alone behind a long one."""
    if not pages:
        return []
    count = -(-len(pages) // max(1, run_pages))
    size, extra = divmod(len(pages), count)
    runs, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        runs.append(pages[start:end])
        start = end
    return runs


@dataclass
class PageCost:
    """A job's recent cost per page, as a moving average (new pages weigh 1/8)."""

    seconds: float = 0.0
    raw_bytes: float = 0.0
    pages: int = 0

    def add(self, seconds: float, raw_bytes: int) -> None:
        weight = 1.0 if self.pages == 0 else 0.125
        self.seconds += (seconds - self.seconds) * weight
        self.raw_bytes += (raw_bytes - self.raw_bytes) * weight
        self.pages += 1

    def run_pages(self, most: int) -> int:
        """Pages per run: as many as fit in ``TARGET_RUN_SECONDS``, 1 to ``most``."""
        if self.pages == 0 or self.seconds <= 0:
            return most
        return max(1, min(most, int(TARGET_RUN_SECONDS / self.seconds)))
