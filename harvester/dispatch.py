"""The Celery side of :class:`~harvester.runner.Dispatcher`: tasks sent by name,
so the library never imports the worker package."""

from __future__ import annotations

from typing import Any

PAGE_TASK = "harvester.page"
FINALIZE_TASK = "harvester.finalize"
QUEUE = "harvest"


class CeleryDispatcher:
    def __init__(self, app: Any):
        self.app = app

    def send_page(self, job_id: str, page: int) -> None:
        self.app.send_task(PAGE_TASK, args=[job_id, page], queue=QUEUE)

    def send_finalize(self, job_id: str) -> None:
        self.app.send_task(FINALIZE_TASK, args=[job_id], queue=QUEUE)
