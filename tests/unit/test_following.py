"""harvester.core.following: what one response says follows its page (total, successor,
end, cap), read without I/O from its URL, headers and checked body."""

from __future__ import annotations

from typing import Any

import pytest

from harvester.core.following import NOTHING_FOLLOWS, Following, what_follows
from harvester.core.job import parse_job
from harvester.core.pagebody import BodyResult
from harvester.core.pagination import Link
from harvester.core.secrets import SecretSet
from harvester.errors import PaginationError

URL = "https://api.example.com/v1/items"
NO_SECRETS = SecretSet({})


def make(pagination: dict[str, Any]):
    return parse_job({"job": {"name": "t", "url": URL}, "pagination": pagination,
                      "output": {"dir": "out"}})


def body(values: dict[str, Any] | None = None, records: int | None = None) -> BodyResult:
    return BodyResult(values=values or {}, records=records, lines=1)


def follows(spec, page: int, *, headers: dict[str, str] | None = None,
            values: dict[str, Any] | None = None, records: int | None = None,
            link: Link | None = None, total: int | None = None) -> Following:
    return what_follows(spec, page, link, total, url=URL, headers=headers or {},
                        result=body(values, records), secrets=NO_SECRETS)


def test_page_one_tells_the_total_from_a_header_and_closes_the_job():
    """A total header counts records: 95 records of 10 a page are 10 pages, final."""
    spec = make({"style": "page", "total_header": "X-Total-Count", "page_size": 10})
    assert follows(spec, 1, headers={"X-Total-Count": "95"}) == Following(total=10, close=True)


def test_a_total_over_max_pages_is_capped_and_says_so():
    """max_pages below what the API announced: the job is cut there, and page 1 says
    how many pages the API had."""
    spec = make({"style": "page", "total_path": "count", "page_size": 10, "max_pages": 3})
    said = follows(spec, 1, values={"count": 1000})
    assert (said.total, said.close) == (3, True)
    assert said.capped == "max_pages = 3 reached while the API announced 100 pages"


def test_page_one_without_its_total_fails():
    """A total path the body lacks is an error, never read as zero pages."""
    spec = make({"style": "page", "total_path": "count", "page_size": 10})
    with pytest.raises(PaginationError, match="page 1 has no value at 'count'"):
        follows(spec, 1, values={})


def test_a_fan_out_page_past_the_first_tells_nothing():
    """Pages after the first of a fan-out job with a known total add nothing."""
    spec = make({"style": "page", "pages": 5})
    assert follows(spec, 3, total=5) == NOTHING_FOLLOWS


def test_a_cursor_names_the_successor_and_a_null_one_ends_the_chain():
    """A chain page with a cursor opens page N+1 with that cursor; null ends the chain
    with the reason."""
    spec = make({"style": "cursor", "cursor_path": "meta.next"})
    said = follows(spec, 4, values={"meta.next": "abc"})
    assert (said.total, said.close, said.next_link) == (5, False, Link(cursor="abc"))
    ended = follows(spec, 5, values={"meta.next": None})
    assert ended.close and ended.next_link is None and ended.end_reason
