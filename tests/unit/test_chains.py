"""Chained pagination rules, pure: successors, stop rules in order, Link headers,
relative URLs, origins, and secrets kept out of stored links."""

from __future__ import annotations

import pytest

from harvester.errors import PaginationError
from harvester.job import parse_job
from harvester.pagination import (Link, check_origin, is_chain, is_fan_out, next_after,
                                  next_link, parse_link_header, request_for, wanted_values)
from harvester.secrets import templatize

URL = "https://api.example.com/v1/items"


def spec(style: str, **pagination):
    doc = {"job": {"name": "t", "url": URL, "params": {"per_page": 10}},
           "pagination": {"style": style, **pagination}, "output": {"dir": "out"}}
    return parse_job(doc, "t.toml")


CURSOR = {"cursor_path": "meta.next_cursor"}


@pytest.mark.parametrize("value", [None, "", {"a": 1}])
def test_null_empty_or_missing_cursor_ends_the_chain(value):
    """A null, empty, or non-scalar cursor (or none at all) is an explicit end."""
    s = spec("cursor", **CURSOR)
    values = {} if value is None else {"meta.next_cursor": value}
    result = next_after(s, 3, URL, values, None, None)
    assert result.link is None and "no cursor" in result.end_reason


def test_cursor_names_the_successor_and_its_request():
    """A cursor becomes the next page's cursor param; numbers are sent as text."""
    s = spec("cursor", cursor_param="after", **CURSOR)
    result = next_after(s, 1, URL, {"meta.next_cursor": 42}, None, None)
    assert result.link == Link(cursor="42")
    request = request_for(s, 2, result.link)
    assert request.params == {"per_page": 10, "after": "42"}
    assert request_for(s, 1).params == {"per_page": 10}, "page 1 sends no cursor"


def test_relative_and_absolute_next_urls():
    """A next URL is resolved against the page's own URL; absolute ones are kept."""
    s = spec("next_url", next_url_path="links.next")
    page_url = "https://api.example.com/v1/items?page=3"
    assert next_after(s, 3, page_url, {"links.next": "?page=4"}, None, None).link.url == \
        "https://api.example.com/v1/items?page=4"
    assert next_after(s, 3, page_url, {"links.next": "/v2/x?page=4"}, None, None).link.url == \
        "https://api.example.com/v2/x?page=4"
    assert next_after(s, 3, page_url, {"links.next": "https://api.example.com/y"}, None,
                      None).link.url == "https://api.example.com/y"


def test_following_a_next_url_adds_only_params_it_lacks():
    """Job params go on every request, but never twice when the next URL carries them."""
    s = spec("next_url", next_url_path="next")
    request = request_for(s, 2, Link(url=f"{URL}?page=2&per_page=10"))
    assert request.url == f"{URL}?page=2&per_page=10" and request.params == {}
    assert request_for(s, 2, Link(url=f"{URL}?page=2")).params == {"per_page": 10}


def test_link_header_with_several_relations_quoted_or_not():
    """RFC 8288: many links in one header, rel lists, quoted and bare values, commas in
    quoted params; the first link whose rel holds "next" wins."""
    header = ('<https://a/x?p=1>; rel="first", <https://a/x?p=3>; title="a, b"; rel="last next",'
              ' </x?p=9>;rel=next')
    links = parse_link_header(header)
    assert [t for t, _ in links] == ["https://a/x?p=1", "https://a/x?p=3", "/x?p=9"]
    assert links[1][1] == {"title": "a, b", "rel": "last next"}
    assert next_link(header) == "https://a/x?p=3"
    assert next_link('<https://a/x?p=2>; rel=prev') is None
    assert next_link(None) is None and next_link("") is None


def test_link_style_resolves_relative_targets_and_ends_without_next():
    """A relative Link target resolves against the page URL; no rel=next ends the chain."""
    s = spec("link")
    assert next_after(s, 1, URL, {}, '</v1/items?page=2>; rel="next"', None).link.url == \
        "https://api.example.com/v1/items?page=2"
    assert next_after(s, 1, URL, {}, '</v1/items?page=1>; rel="prev"', None).link is None


def test_stop_rules_apply_in_the_stated_order():
    """Explicit end first, then stop_on_empty (the empty page is still committed: the rule
    only says none follows), then max_pages."""
    s = spec("cursor", stop_on_empty=True, records_path="data", max_pages=5, **CURSOR)
    assert "no cursor" in next_after(s, 5, URL, {}, None, 0).end_reason
    assert "empty" in next_after(s, 5, URL, {"meta.next_cursor": "n"}, None, 0).end_reason
    assert "max_pages" in next_after(s, 5, URL, {"meta.next_cursor": "n"}, None, 3).end_reason
    assert next_after(s, 4, URL, {"meta.next_cursor": "n"}, None, 3).link == Link(cursor="n")


def test_page_style_without_a_total_runs_as_a_chain_until_empty():
    """page/offset with only stop_on_empty cannot fan out: each page names the next number."""
    s = spec("page", stop_on_empty=True, records_path="data")
    assert is_chain(s) and not is_fan_out(s)
    assert next_after(s, 7, URL, {}, None, 2).link == Link()
    assert request_for(s, 8).params == {"per_page": 10, "page": 8}
    assert next_after(s, 8, URL, {}, None, 0).link is None


def test_repeated_links_have_the_same_identity():
    """The ledger's loop check compares identities: equal cursors or URLs, equal identity."""
    assert Link(cursor="a").identity == Link(cursor="a").identity != Link(url="a").identity
    assert Link().identity is None, "a numbered page has nothing that can loop"


def test_wanted_values_per_style_and_page():
    """Only what a page needs is read: the total on page 1, the cursor or next URL on all."""
    assert wanted_values(spec("page", total_pages_path="meta.n"), 1) == ["meta.n"]
    assert wanted_values(spec("page", total_pages_path="meta.n"), 2) == []
    assert wanted_values(spec("cursor", **CURSOR), 9) == ["meta.next_cursor"]
    assert wanted_values(spec("link"), 1) == []


def test_other_origins_are_refused_unless_allowed():
    """Scheme, host and port must match the job's URL, or the host be in allow_hosts."""
    s = spec("next_url", next_url_path="next")
    check_origin(s, "https://API.example.com:443/other")
    for url in ("http://api.example.com/x", "https://api.example.com:8443/x",
                "https://evil.example.net/x"):
        with pytest.raises(PaginationError) as info:
            check_origin(s, url)
        assert "https://api.example.com:443" in str(info.value)
    allowed = spec("next_url", next_url_path="next", allow_hosts=["cdn.example.com"])
    check_origin(allowed, "https://cdn.example.com/page/2")


def test_secrets_echoed_into_next_urls_are_stored_as_templates():
    """An API that echoes api_key into its next link: the stored link has ${API_KEY} again."""
    env = {"API_KEY": "s3cr/t k"}
    value = {"api_key": "${API_KEY}"}
    for form in ("s3cr/t k", "s3cr%2Ft%20k", "s3cr%2Ft+k"):
        assert templatize(f"{URL}?page=2&api_key={form}", value, env) == \
            f"{URL}?page=2&api_key=${{API_KEY}}"


def test_every_form_of_a_secret_is_caught():
    """Lower-case percent escapes, + for spaces, and repr/JSON escapes of a secret are all
    redacted (and templatized); the same letters in another case are not rewritten."""
    from harvester.secrets import redact

    secret = "s3cr/t k\n"
    for form in ("s3cr/t k\n", "s3cr%2Ft%20k%0A", "s3cr%2ft%20k%0a", "s3cr%2Ft+k%0A",
                 "s3cr/t k\\n"):
        assert redact(f"x={form};", [secret]) == "x=***;"
        assert templatize(f"?k={form}", {"k": "${K}"}, {"K": secret}) == "?k=${K}"
    assert templatize("?k=S3CR/T K", {"k": "${K}"}, {"K": "s3cr/t k"}) == "?k=S3CR/T K"
