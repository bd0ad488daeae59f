"""Chained pagination rules, pure: successors, stop rules in order, Link headers,
relative URLs, origins, and secrets kept out of stored links."""

from __future__ import annotations

import pytest

from harvester.errors import PaginationError
from harvester.core.job import parse_job
from harvester.core.pagination import (Link, is_chain, is_fan_out, next_after, next_link,
                                  parse_link_header, request_for, wanted_values)
from harvester.core.scan import Unreadable
from harvester.core.secrets import SecretSet, Template

URL = "https://api.example.com/v1/items"


def spec(style: str, **pagination):
    doc = {"job": {"name": "t", "url": URL, "params": {"per_page": 10}},
           "pagination": {"style": style, **pagination}, "output": {"dir": "out"}}
    return parse_job(doc, "t.toml")


CURSOR = {"cursor_path": "meta.next_cursor"}


@pytest.mark.parametrize("value", [None, ""])
def test_null_empty_or_missing_cursor_ends_the_chain(value):
    """A null or empty cursor (or none at all) is an explicit end."""
    s = spec("cursor", **CURSOR)
    values = {} if value is None else {"meta.next_cursor": value}
    result = next_after(s, 3, URL, values, None, None)
    assert result.link is None and "no cursor" in result.end_reason


@pytest.mark.parametrize("value", [{"a": 1}, [1], True, Unreadable("over 64 KiB")])
def test_a_cursor_of_the_wrong_kind_fails_instead_of_ending(value):
    """An object, array, boolean or unreadable (too large) cursor is an error, never the
    end: reading it as the end would report a cut-short chain as complete."""
    with pytest.raises(PaginationError):
        next_after(spec("cursor", **CURSOR), 3, URL, {"meta.next_cursor": value}, None, None)


@pytest.mark.parametrize("value", [42, {"href": "x"}, Unreadable("over 64 KiB")])
def test_a_next_url_of_the_wrong_kind_fails_instead_of_ending(value):
    """A next URL that is not a string, or too large to read, fails the page."""
    with pytest.raises(PaginationError):
        next_after(spec("next_url", next_url_path="next"), 3, URL, {"next": value}, None, None)


def test_an_unparseable_link_header_naming_next_fails():
    """A Link header that mentions next but cannot be parsed is an error, not the end."""
    with pytest.raises(PaginationError):
        next_after(spec("link"), 1, URL, {}, 'https://a/x?p=2; rel="next"', None)


def test_cursor_names_the_successor_and_its_request():
    """A cursor becomes the next page's cursor param; numbers are sent as text."""
    s = spec("cursor", cursor_param="after", **CURSOR)
    result = next_after(s, 1, URL, {"meta.next_cursor": 42}, None, None)
    assert result.link == Link(cursor="42")
    request = request_for(s, 2, result.link)
    assert request.params == {"per_page": 10, "after": Template.literal("42")}
    assert request_for(s, 1).params == {"per_page": 10}, "page 1 sends no cursor"


def test_relative_and_absolute_next_urls():
    """A next URL is resolved against the page's own URL; absolute ones are kept."""
    s = spec("next_url", next_url_path="links.next")
    page_url = "https://api.example.com/v1/items?page=3"
    def follow(target):
        return next_after(s, 3, page_url, {"links.next": target}, None, None).link.url.render()

    assert follow("?page=4") == "https://api.example.com/v1/items?page=4"
    assert follow("/v2/x?page=4") == "https://api.example.com/v2/x?page=4"
    assert follow("https://api.example.com/y") == "https://api.example.com/y"
    assert follow("\\\\evil/x") == "\\\\evil/x", "hostile text is kept as sent, to be refused"


def test_following_a_next_url_adds_only_params_it_lacks():
    """Job params go on every request, but never twice when the next URL carries them."""
    s = spec("next_url", next_url_path="next")
    request = request_for(s, 2, Link(url=f"{URL}?page=2&per_page=10"))
    assert request.url.render() == f"{URL}?page=2&per_page=10" and request.params == {}
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
    assert next_after(s, 1, URL, {}, '</v1/items?page=2>; rel="next"', None).link.url.render() \
        == "https://api.example.com/v1/items?page=2"
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


def test_secrets_echoed_into_next_urls_are_captured_as_holes():
    """An API that echoes api_key into its next link, in any spelling: the stored link
    shows ${API_KEY} and holds no secret, yet is requested byte for byte as sent."""
    env = {"API_KEY": "s3cr/t k+"}
    secrets = SecretSet(env)
    s = spec("next_url", next_url_path="next")
    for form in ("s3cr/t k+", "s3cr%2Ft%20k%2B", "s3cr%2ft+k%2b", "s3cr/t%20k%2B"):
        link = next_after(s, 1, URL, {"next": f"{URL}?page=2&api_key={form}"}, None, None,
                          secrets).link
        stored = str(link.to_dict())
        assert "s3cr" not in stored
        assert link.url.render() == f"{URL}?page=2&api_key=${{API_KEY}}"
        again = Link.from_dict(link.to_dict())
        assert again.url.fill(env) == f"{URL}?page=2&api_key={form}"


def test_a_literal_template_from_the_api_is_never_resolved():
    """A next URL or cursor holding "${HOME}" stays that text: API data never reads
    the worker's environment."""
    env = {"API_KEY": "k", "HOME": "/root"}
    s = spec("cursor", **CURSOR)
    link = next_after(s, 1, URL, {"meta.next_cursor": "${HOME}"}, None, None,
                      SecretSet({"API_KEY": "k"})).link
    assert Link.from_dict(link.to_dict()).cursor.fill(env) == "${HOME}"


def test_every_form_of_a_secret_is_caught():
    """Lower-case percent escapes, + for spaces, a mix, and repr/JSON escapes of a secret
    are all redacted; the same letters in another case are not."""
    from harvester.core.secrets import redact

    secret = "s3cr/t k\n"
    for form in ("s3cr/t k\n", "s3cr%2Ft%20k%0A", "s3cr%2ft%20k%0a", "s3cr%2Ft+k%0A",
                 "s3cr/t k\\n", "s3cr/t%20k\n"):
        assert redact(f"x={form};", [secret]) == "x=***;"
    assert redact("?k=S3CR/T K", ["s3cr/t k"]) == "?k=S3CR/T K"
