"""harvester.core.pagination: page counts and the request for fan-out page N (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from harvester.core.body import BodyInspector
from harvester.errors import PaginationError
from harvester.core.job import parse_job
from harvester.core.spec import JobSpec
from harvester.core.pagination import (
    PageRequest,
    is_fan_out,
    known_total,
    request_for,
    total_from_value,
    total_path,
)

URL = "https://api.example.com/v1/items"


def make(pagination: dict[str, Any], **job: Any) -> JobSpec:
    """A validated spec with the given [pagination] and extra [job] keys."""
    return parse_job({
        "job": {"name": "t", "url": URL, **job},
        "pagination": pagination,
        "output": {"dir": "out"},
    })


# ------------------------------------------------------------------ is_fan_out

@pytest.mark.parametrize("pagination, fan_out", [
    ({"style": "page", "pages": 3}, True),
    ({"style": "page", "total_pages_path": "meta.total_pages"}, True),
    ({"style": "offset", "total": 10}, True),
    ({"style": "offset", "total_path": "count"}, True),
    ({"style": "cursor", "cursor_path": "next"}, False),
    ({"style": "next_url", "next_url_path": "next"}, False),
    ({"style": "link"}, False),
])
def test_is_fan_out(pagination, fan_out):
    """page and offset styles fan out; cursor, next_url and link form a chain."""
    assert is_fan_out(make(pagination)) is fan_out


# ----------------------------------------------------------------- known_total

@pytest.mark.parametrize("pagination, expected", [
    ({"style": "page", "pages": 7}, 7),
    ({"style": "page", "pages": 7, "max_pages": 3}, 3),
    ({"style": "page", "pages": 2, "max_pages": 30}, 2),
    ({"style": "page", "max_pages": 4}, 4),
    ({"style": "page", "total_pages_path": "meta.total_pages"}, None),
    ({"style": "page", "total_pages_path": "meta.total_pages", "max_pages": 9}, 9),
    ({"style": "offset", "total": 1000, "limit": 100}, 10),
    ({"style": "offset", "total": 1001, "limit": 100}, 11),
    ({"style": "offset", "total": 99, "limit": 100}, 1),
    ({"style": "offset", "total": 1000, "limit": 100, "max_pages": 4}, 4),
    ({"style": "offset", "total_path": "count"}, None),
    ({"style": "cursor", "cursor_path": "next"}, None),
    ({"style": "cursor", "cursor_path": "next", "max_pages": 5}, 5),
])
def test_known_total(pagination, expected):
    """The page count fixed by the job file: pages, ceil(total/limit), capped by max_pages."""
    assert known_total(make(pagination)) == expected


# ------------------------------------------------------------------ total_path

@pytest.mark.parametrize("pagination, expected", [
    ({"style": "page", "total_pages_path": "meta.total_pages"}, "meta.total_pages"),
    ({"style": "page", "pages": 3}, None),
    ({"style": "offset", "total_path": "count"}, "count"),
    ({"style": "offset", "total": 50}, None),
    ({"style": "cursor", "cursor_path": "next"}, None),
    ({"style": "page", "max_pages": 3}, None),
])
def test_total_path(pagination, expected):
    """Only a page/offset job without a fixed total learns its total from page 1."""
    assert total_path(make(pagination)) == expected


# ------------------------------------------------------------ total_from_value

PAGE_LEARNT = {"style": "page", "total_pages_path": "meta.total_pages"}
OFFSET_LEARNT = {"style": "offset", "total_path": "count", "limit": 100}


@pytest.mark.parametrize("pagination, value, expected", [
    (PAGE_LEARNT, 12, 12),
    (PAGE_LEARNT, 3.0, 3),
    (PAGE_LEARNT, 1, 1),
    (PAGE_LEARNT, 0, 1),
    ({**PAGE_LEARNT, "max_pages": 5}, 12, 5),
    ({**PAGE_LEARNT, "max_pages": 50}, 12, 12),
    ({**PAGE_LEARNT, "max_pages": 5}, 0, 1),
    (OFFSET_LEARNT, 1000, 10),
    (OFFSET_LEARNT, 1001, 11),
    (OFFSET_LEARNT, 1, 1),
    (OFFSET_LEARNT, 0, 1),
    (OFFSET_LEARNT, 250.0, 3),
    ({**OFFSET_LEARNT, "max_pages": 2}, 1000, 2),
])
def test_total_from_value(pagination, value, expected):
    """Whole numbers give the page count (offset: ceil(total/limit)); 0 -> 1; max_pages caps."""
    assert total_from_value(make(pagination), value) == expected


@pytest.mark.parametrize("value", [2.5, -1, -0.5, True, False, "12", None, [3], {"n": 3}])
@pytest.mark.parametrize("pagination", [PAGE_LEARNT, OFFSET_LEARNT], ids=["page", "offset"])
def test_total_from_value_rejects(pagination, value):
    """Fractions, negatives, booleans and non-numbers raise PaginationError naming the path."""
    spec = make(pagination)
    with pytest.raises(PaginationError) as info:
        total_from_value(spec, value)
    assert total_path(spec) in str(info.value)
    assert info.value.retryable is False


def test_total_learnt_from_a_body_with_a_float_total():
    """A body reporting total_pages as 3.0 yields 3 pages through BodyInspector + total_from_value."""
    spec = make(PAGE_LEARNT)
    inspector = BodyInspector([total_path(spec)])
    inspector.feed(b'{"meta": {"total_pages": 3.0}, "data": []}')
    value = inspector.finish()["meta.total_pages"]
    assert total_from_value(spec, value) == 3


def test_total_learnt_from_a_body_with_an_int_total():
    """The usual case: an integer total read by BodyInspector is accepted as is."""
    spec = make(OFFSET_LEARNT)
    inspector = BodyInspector([total_path(spec)])
    inspector.feed(b'{"count": 1234, "results": []}')
    assert total_from_value(spec, inspector.finish()["count"]) == 13


# ------------------------------------------------------------------ request_for

def test_page_style_request():
    """Page N sends param = start + N - 1 on top of the job's params."""
    spec = make({"style": "page", "pages": 9, "param": "p", "start": 0},
                params={"per_page": 100})
    assert request_for(spec, 1) == PageRequest("GET", URL, {"per_page": 100, "p": 0})
    assert request_for(spec, 5) == PageRequest("GET", URL, {"per_page": 100, "p": 4})


def test_page_style_default_param_starts_at_1():
    """The default page param is 'page', starting at 1."""
    spec = make({"style": "page", "pages": 3})
    assert request_for(spec, 1).params == {"page": 1}
    assert request_for(spec, 3).params == {"page": 3}


def test_offset_style_request():
    """Page N sends offset = (N-1)*limit and limit = limit under the configured names."""
    spec = make({"style": "offset", "total": 1000, "limit": 50, "offset_param": "skip",
                 "limit_param": "take"})
    assert request_for(spec, 1).params == {"skip": 0, "take": 50}
    assert request_for(spec, 3).params == {"skip": 100, "take": 50}


def test_paging_param_overrides_a_job_param_of_the_same_name():
    """A job param named like the paging param is replaced by the page's value."""
    spec = make({"style": "page", "pages": 3}, params={"page": 99, "q": "x"})
    assert request_for(spec, 2).params == {"page": 2, "q": "x"}


def test_request_for_does_not_mutate_the_spec():
    """Building page requests leaves the spec's params and json untouched."""
    spec = make({"style": "page", "pages": 3}, method="POST", params={"a": 1}, json={"q": 1})
    request_for(spec, 2)
    assert spec.params == {"a": 1} and spec.json == {"q": 1}


def test_post_json_body_gets_paging_fields():
    """A POST with a json table sends the paging fields in the body, not the query."""
    spec = make({"style": "offset", "total": 500, "limit": 100}, method="POST",
                params={"api": "v2"}, json={"query": {"term": "x"}})
    request = request_for(spec, 3)
    assert request.method == "POST"
    assert request.json == {"query": {"term": "x"}, "offset": 200, "limit": 100}
    assert request.params == {"api": "v2"}


def test_post_json_array_body_keeps_paging_in_query():
    """A POST whose json is an array cannot hold fields: paging goes to the query string."""
    spec = make({"style": "page", "pages": 3}, method="POST", json=[1, 2])
    request = request_for(spec, 2)
    assert request.json == [1, 2] and request.params == {"page": 2}


def test_post_without_json_uses_query():
    """A POST without a json body puts the paging param in the query string."""
    request = request_for(make({"style": "page", "pages": 3}, method="POST"), 2)
    assert request.json is None and request.params == {"page": 2}


def test_templates_kept_in_requests():
    """Templates in url, params and json body pass through unresolved."""
    spec = make({"style": "page", "pages": 3}, url="https://api.example.com/${PATH}",
                method="POST", params={"key": "${KEY}"}, json={"token": "${TOKEN}"})
    request = request_for(spec, 2)
    assert request.url.render() == "https://api.example.com/${PATH}"
    assert request.params == {"key": "${KEY}"}
    assert request.json == {"token": "${TOKEN}", "page": 2}


@pytest.mark.parametrize("page", [0, -1])
def test_request_for_rejects_page_below_1(page):
    """Page keys start at 1."""
    with pytest.raises(ValueError):
        request_for(make({"style": "page", "pages": 3}), page)


@pytest.mark.parametrize("pagination", [
    {"style": "cursor", "cursor_path": "next"},
    {"style": "next_url", "next_url_path": "next"},
    {"style": "link"},
])
def test_request_for_chained_styles_raises(pagination):
    """Chained styles cannot address a page by number."""
    with pytest.raises(PaginationError):
        request_for(make(pagination), 2)


# --------------------------------------------------------- window scheduling

