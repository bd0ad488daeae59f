"""Celery task events as Flower sees them: a real ``celery.events`` receiver on the
test's Redis, recording every event the workers send, plus a look at kombu's own
keys to tell whether every task message was acked.

    with TaskEvents(redis_server.url) as events:
        ...run a job...
    failed = events.of_type("task-failed")
    assert events.page_of(failed[0]["uuid"]) == 7

Flower builds its task list and its Prometheus counters from exactly these events
(task-received, task-started, task-succeeded, task-failed): what this records is
what Flower would show.
"""

from __future__ import annotations

import ast
import json
import threading
import time

import redis
from celery import Celery
from celery.events.receiver import EventReceiver

# The Redis keys kombu's transport keeps for the harvester's queue ("harvest", one
# list per priority step) and for messages delivered but not yet acked.
QUEUE_KEYS = ["harvest"] + [f"harvest\x06\x16{step}" for step in (3, 6, 9)]
UNACKED_KEYS = ("unacked", "unacked_index")


class _Receiver(EventReceiver):
    """An EventReceiver that says when its queue is bound (events before that are lost)."""

    def __init__(self, *args, ready: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self._ready = ready

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        super().on_consume_ready(connection, channel, consumers, **kwargs)
        self._ready.set()


class TaskEvents:
    """Records every Celery event on ``broker_url`` from ``start()`` to ``stop()``."""

    def __init__(self, broker_url: str):
        self.app = Celery("task-events", broker=broker_url)
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver: _Receiver | None = None
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as connection:
                self._receiver = _Receiver(connection, handlers={"*": self._record},
                                           app=self.app, ready=self._ready)
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced by stop()
            self._error = exc
            self._ready.set()

    def _record(self, event: dict) -> None:
        with self._lock:
            self.events.append(dict(event))

    def start(self) -> "TaskEvents":
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"the event receiver did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self.app.close()
        if self._error is not None:
            raise RuntimeError("the event receiver failed") from self._error

    def __enter__(self) -> "TaskEvents":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------- queries

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.snapshot() if e.get("type") == kind]

    def tasks(self, name: str) -> dict[str, list]:
        """uuid -> the task's args, for every task-received event of task ``name``."""
        return {e["uuid"]: ast.literal_eval(e["args"]) for e in self.of_type("task-received")
                if e.get("name") == name}

    def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError("the expected task events did not arrive in time; got "
                                     + json.dumps([e.get("type") for e in self.snapshot()]))
            time.sleep(0.1)


def broker_backlog(client: redis.Redis) -> dict[str, int]:
    """Messages kombu still holds: queued in the harvester's queue lists, or delivered
    and not yet acked (the ``unacked`` hash and its index)."""
    sizes = {key: client.llen(key) for key in QUEUE_KEYS}
    sizes["unacked"] = client.hlen("unacked")
    sizes["unacked_index"] = client.zcard("unacked_index")
    return {key: n for key, n in sizes.items() if n}
