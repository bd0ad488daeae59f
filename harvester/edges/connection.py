"""The ledger's Redis connection: its Lua scripts (``lua/``, each with the prelude),
waits while Redis is away, and redis-py's errors translated into
:class:`~harvester.errors.BrokerUnavailable` at this edge.
"""

from __future__ import annotations

import time
from functools import cache
from importlib.resources import files
from typing import Any, Self

import redis
import structlog

from ..errors import BrokerUnavailable

log = structlog.get_logger("harvester.ledger")


@cache
def _script_source(name: str) -> str:
    lua = files("harvester.edges") / "lua"
    return (lua / "_prelude.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def now_ms() -> int:
    return int(time.time() * 1000)


class LedgerConnection:
    """One Redis client, the job key names, and calls that wait for Redis to come back."""

    def __init__(self, client: redis.Redis, *, lease_seconds: float = 15.0,
                 queued_seconds: float = 900.0, wait_seconds: float = 120.0,
                 keep_seconds: float = 30 * 86400):
        self.redis = client
        # How long a final job's keys stay (0 = for ever).
        self.keep_seconds = max(1, round(keep_seconds)) if keep_seconds > 0 else 0
        self.lease_ms = int(lease_seconds * 1000)
        self.queued_ms = int(queued_seconds * 1000)
        # How long a call waits for Redis to come back (restart, failover, network).
        self.wait_seconds = wait_seconds
        self._scripts: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A ledger on ``url``; ``redis://``, ``rediss://`` (TLS), passwords and ACL users."""
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                      socket_timeout=30, health_check_interval=15,
                                      retry_on_timeout=True)
        return cls(client, **kwargs)

    # --------------------------------------------------------------- helpers

    @staticmethod
    def prefix(job_id: str) -> str:
        return f"hv:{{{job_id}}}"

    def key(self, job_id: str, name: str) -> str:
        return f"{self.prefix(job_id)}:{name}"

    def run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``lua/<name>.lua`` (with the prelude); redis errors become ours."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(_script_source(name))
        return self._call(script, keys=keys, args=args)

    def _call(self, fn: Any, *args: Any, wait: bool = True, **kwargs: Any) -> Any:
        """Call redis-py, waiting up to ``wait_seconds`` for Redis to come back.

        Every ledger script is safe to run twice (a commit whose reply was lost
        is recognised by its location, see :meth:`commit`).
        """
        deadline = time.monotonic() + (self.wait_seconds if wait else 0)
        delay = 0.1
        while True:
            try:
                return fn(*args, **kwargs)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(_describe_connection(self.redis), reason) from None
                log.warning("redis.unavailable", reason=reason, retry_in=round(delay, 2))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _pipeline(self, build: Any, *, transaction: bool = True) -> list[Any]:
        """Run the commands ``build(pipe)`` queues, as one pipeline, waiting for Redis.

        The pipeline is rebuilt on every try: redis-py empties a pipeline's
        command list when ``execute`` fails, so retrying it would run nothing.
        """
        def run() -> list[Any]:
            pipe = self.redis.pipeline(transaction=transaction)
            build(pipe)
            return pipe.execute()

        return self._call(run)

    def ping(self) -> None:
        """Fail at once (no waiting) when no Redis answers: the CLI's first contact."""
        self._call(self.redis.ping, wait=False)


def _describe_connection(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if kwargs.get("ssl") else "redis"  # never the password
    return f"{scheme}://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
