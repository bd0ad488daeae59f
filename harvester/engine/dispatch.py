"""The Celery side of :class:`~harvester.engine.runner.Dispatcher`: tasks sent by name,
so the library never imports the worker package.

kombu's Redis transport keeps one list per priority step and pops the most
urgent first (0 before 6). Ordinary pages go at 6; a page re-sent because its
worker died, and the finalizer, go at 0, so they do not wait behind the whole
window of queued pages.

Pages of a fan-out job travel in runs: one ``harvester.pages`` message for up
to ``run_pages`` pages (see :func:`split_runs`), which one task harvests one
after the other, each page with its own ledger state (see :mod:`harvester.core.runs`).
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import OperationalError

from ..core.runs import split_runs
from ..errors import BrokerUnavailable

PAGE_TASK = "harvester.page"
RUN_TASK = "harvester.pages"
FINALIZE_TASK = "harvester.finalize"
QUEUE = "harvest"
NORMAL, URGENT = 6, 0
# The Redis lists kombu keeps for QUEUE, one per priority step (0, 3, 6, 9).
QUEUE_KEYS = [QUEUE] + [f"{QUEUE}\x06\x16{step}" for step in (3, 6, 9)]


class CeleryDispatcher:
    def __init__(self, app: Any, *, run_pages: int = 1):
        self.app = app
        self.run_pages = run_pages  # most pages per message, unless a caller says less

    def send_page(self, job_id: str, page: int, *, urgent: bool = False) -> None:
        self._send(PAGE_TASK, [job_id, page], URGENT if urgent else NORMAL)

    def send_pages(self, job_id: str, pages: list[int], *, run_pages: int | None = None) -> None:
        most = self.run_pages if run_pages is None else min(run_pages, self.run_pages)
        for run in split_runs(pages, most):
            if len(run) == 1:
                self._send(PAGE_TASK, [job_id, run[0]], NORMAL)
            else:
                self._send(RUN_TASK, [job_id, run], NORMAL)

    def send_finalize(self, job_id: str) -> None:
        self._send(FINALIZE_TASK, [job_id], URGENT)

    def _send(self, name: str, args: list[Any], priority: int) -> None:
        try:
            self.app.send_task(name, args=args, queue=QUEUE, priority=priority)
        except OperationalError as exc:
            # kombu already retried the publish; the page stays leased in the
            # ledger, so the reaper sends it once the broker is back.
            raise BrokerUnavailable("the broker (HARVEST_REDIS_URL)",
                                    str(exc).splitlines()[0]) from None
