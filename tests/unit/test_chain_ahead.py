"""Which request a chain task sent ahead gets used, and which are dropped unread
(harvester.engine.chain). The fetcher is a stand-in that records what is sent: the
requests themselves are exercised against the demo API in
tests/integration/test_pagination_styles.py."""

from __future__ import annotations

from concurrent.futures import Future

from harvester.core.following import Following
from harvester.core.pagination import Link
from harvester.engine.chain import ChainAhead
from harvester.engine.fetcher import Ahead


class _Sent:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Fetcher:
    """Sends nothing: each 'request' is a done future holding a closable response."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, Link, _Sent]] = []

    def send_ahead(self, job_id, spec, page, link, *, limited):
        response = _Sent()
        future: Future = Future()
        future.set_result(response)
        self.sent.append((page, link, response))
        return Ahead(page, link, future)


def _following(cursor: str | None) -> Following:
    return Following(next_link=Link(cursor=cursor) if cursor else None)


def _send(chain: ChainAhead, page: int, cursor: str | None) -> None:
    chain.send("job", None, page, _following(cursor), limited=lambda: False)


def test_the_last_attempts_request_serves_the_successor_once():
    """Two attempts at page 4 each send page 5's request; after the commit names page 5,
    only the last one is kept (its link is the one the ledger recorded), the other is
    closed unread; page 5 with that link takes it, and only once."""
    fetcher = _Fetcher()
    chain = ChainAhead(fetcher)
    _send(chain, 4, "c5-first")
    _send(chain, 4, "c5")
    chain.settle(5)
    (_, _, first), (_, _, last) = (fetcher.sent[0], fetcher.sent[1])
    assert first.closed and not last.closed
    ahead = chain.request_for(5, Link(cursor="c5"), paused=False)
    assert ahead is not None and ahead.take() is last
    assert chain.request_for(5, Link(cursor="c5"), paused=False) is None


def test_a_request_that_does_not_serve_the_page_is_dropped():
    """Another link for the page (another worker committed page 4 first), another page,
    a Retry-After pause, no successor at all: the request sent ahead is closed unread."""
    for page, link, paused, successor in [(5, Link(cursor="other"), False, 5),
                                          (6, Link(cursor="c5"), False, 5),
                                          (5, Link(cursor="c5"), True, 5)]:
        fetcher = _Fetcher()
        chain = ChainAhead(fetcher)
        _send(chain, 4, "c5")
        chain.settle(successor)
        assert chain.request_for(page, link, paused=paused) is None
        assert fetcher.sent[0][2].closed
    for successor in (None, 7):
        fetcher = _Fetcher()
        chain = ChainAhead(fetcher)
        _send(chain, 4, "c5")
        chain.settle(successor)
        assert fetcher.sent[0][2].closed


def test_a_request_not_taken_is_dropped_when_the_task_ends():
    """The successor never started (the job was cancelled, the task ended): drop()
    closes its request."""
    fetcher = _Fetcher()
    chain = ChainAhead(fetcher)
    _send(chain, 1, "c2")
    chain.settle(2)
    chain.drop()
    assert fetcher.sent[0][2].closed


def test_no_request_ahead_for_a_link_already_followed_an_end_or_an_abort():
    """A cursor the task already followed (the API loops) is never asked for ahead: the
    ledger fails that page, and the API sees nothing. Nor is anything sent when the page
    ends the chain or aborts the job."""
    fetcher = _Fetcher()
    chain = ChainAhead(fetcher)
    assert chain.request_for(2, Link(cursor="c2"), paused=False) is None
    _send(chain, 2, "c2")
    _send(chain, 2, None)
    chain.send("job", None, 2, Following(next_link=Link(cursor="c3"), abort="capped"),
               limited=lambda: False)
    assert fetcher.sent == []
    _send(chain, 2, "c3")
    assert [page for page, _, _ in fetcher.sent] == [3]
