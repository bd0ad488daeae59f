"""A chain task's requests sent ahead.

A chain page's successor is known once the page's body is checked (its cursor,
next URL or Link header), before the page is made durable and committed. So
while this thread fsyncs and commits page N, page N+1's request is already on
its way on a helper thread: the API's latency overlaps that work, and a chain
runs at close to what a bare loop of requests gets from the API.

Only a request the chain really goes on with is used: the one whose link the
ledger recorded with N's commit (the last attempt's), taken by N+1's first
attempt once N+1 has started on this worker with that same link and no
Retry-After pause holds. Every other one is dropped unread (its limiter slot
released), so a request sent ahead never writes a byte or commits anything by
itself. A link the chain already followed in this task is never sent ahead:
the ledger fails that page as a loop, and the API sees no request for it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..core.following import Following
from ..core.spec import JobSpec
from .fetcher import Ahead, PageFetcher


class ChainAhead:
    """The requests one chain task sent ahead; :meth:`drop` when the task ends."""

    def __init__(self, fetcher: PageFetcher):
        self._fetcher = fetcher
        self._next: Ahead | None = None  # for the page the task runs next
        self._sent: list[Ahead] = []  # during the current page, one per attempt
        self._followed: set[str] = set()  # identities of the links this task followed

    def request_for(self, page: int, link, *, paused: bool) -> Ahead | None:
        """The request sent ahead for ``page``'s first attempt, if one serves it; the
        caller takes it or cancels it."""
        ahead, self._next = self._next, None
        if link is not None and link.identity is not None:
            self._followed.add(link.identity)
        if ahead is not None and (paused or not ahead.serves(page, link)):
            ahead.cancel()  # another link, or a Retry-After pause it may not have seen
            return None
        return ahead

    def send(self, job_id: str, spec: JobSpec, page: int, following: Following, *,
             limited: Callable[[], bool]) -> None:
        """Send the request for the successor ``following`` names, if any."""
        link = following.next_link
        if link is None or following.abort is not None or link.identity in self._followed:
            return
        made = self._fetcher.send_ahead(job_id, spec, page + 1, link, limited=limited())
        if made is not None:
            self._sent.append(made)

    def settle(self, successor: int | None) -> None:
        """After a page: keep the request for ``successor`` (the last one sent: its
        link is the one the commit recorded), drop every other."""
        keep = self._sent[-1] if self._sent and self._sent[-1].page == successor else None
        for ahead in self._sent:
            if ahead is not keep:
                ahead.cancel()
        self._sent = []
        if self._next is not None:
            self._next.cancel()
        self._next = keep

    def drop(self) -> None:
        self.settle(None)
