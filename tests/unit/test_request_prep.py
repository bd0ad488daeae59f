"""A page's request as the HTTP edge prepares it (harvester.edges.fetch._prepare, with
harvester.edges.prepare's templates) is byte for byte the request requests' own
``Session.prepare_request`` makes, whether it came from the session's per-URL template
or was prepared whole. No sockets."""

from __future__ import annotations

import requests

from harvester.core.secrets import SecretSet
from harvester.core.spec import HttpSpec
from harvester.edges.fetch import _prepare, build_session

NO_SECRETS = SecretSet({})
URL = "http://user:pa%40ss@api.example.com:8080/v1/items"
PLAIN_URL = "http://api.example.com:8080/v1/items"


def _reference(session: requests.Session, method: str, url: str, params, body, headers):
    return session.prepare_request(requests.Request(method, url, params=params, json=body,
                                                    headers=headers))


def _same(ours: requests.PreparedRequest, theirs: requests.PreparedRequest) -> None:
    assert (ours.method, ours.url, ours.body) == (theirs.method, theirs.url, theirs.body)
    assert dict(ours.headers) == dict(theirs.headers)


def test_each_page_from_a_template_is_the_request_requests_would_prepare():
    """Pages 1..5 of one URL share a template: each has its own query, the job's
    headers, the Basic auth of the URL's user:password, nothing of another page."""
    session = build_session(HttpSpec(), URL)
    headers = {"Accept": "application/json", "X-Api-Key": "k1"}
    for page in range(1, 6):
        params = {"per_page": "100", "page": str(page), "q": "a b&c"}
        ours = _prepare(session, "GET", URL, params, None, headers, NO_SECRETS)
        _same(ours, _reference(session, "GET", URL, params, None, headers))
    assert len(session.templates) == 1


def test_a_cookie_the_api_sets_after_the_template_is_sent_on_later_pages_only_to_its_domain():
    """The template is made before any cookie: one the API sets later still goes with
    the next page, as requests would send it, and a cookie of another host never does."""
    session = build_session(HttpSpec(), PLAIN_URL)
    first = _prepare(session, "GET", PLAIN_URL, {"page": "1"}, None, {}, NO_SECRETS)
    assert "Cookie" not in first.headers
    session.cookies.set("sid", "abc", domain="api.example.com")
    session.cookies.set("other", "zzz", domain="elsewhere.example.com")
    ours = _prepare(session, "GET", PLAIN_URL, {"page": "2"}, None, {}, NO_SECRETS)
    assert ours.headers["Cookie"] == "sid=abc"
    _same(ours, _reference(session, "GET", PLAIN_URL, {"page": "2"}, None, {}))


def test_other_headers_methods_or_a_body_get_their_own_preparation():
    """A template serves only its method, URL and headers; a request with a body (a
    POST page's JSON) is prepared whole; the session keeps a bounded number."""
    session = build_session(HttpSpec(), URL)
    for token in ("a", "b"):
        headers = {"Authorization": f"Bearer {token}"}
        ours = _prepare(session, "GET", URL, {"page": "1"}, None, headers, NO_SECRETS)
        _same(ours, _reference(session, "GET", URL, {"page": "1"}, None, headers))
    body = {"page": 3, "filter": {"x": [1, 2]}}
    ours = _prepare(session, "POST", URL, None, body, {}, NO_SECRETS)
    _same(ours, _reference(session, "POST", URL, None, body, {}))
    head = _prepare(session, "POST", URL, {"page": "4"}, None, {}, NO_SECRETS)
    _same(head, _reference(session, "POST", URL, {"page": "4"}, None, {}))
    assert len(session.templates) == 3
    for index in range(20):
        _prepare(session, "GET", f"{URL}/{index}", {"page": "1"}, None, {}, NO_SECRETS)
    assert len(session.templates) == session.templates.MOST


def test_a_query_of_any_value_requests_accepts_is_encoded_as_requests_encodes_it():
    """Strings with reserved and non-ASCII characters, numbers, lists (repeated
    names), None (left out), bytes and an empty mapping: each page's URL is the one
    requests would prepare from the same mapping."""
    session = build_session(HttpSpec(), PLAIN_URL)
    queries = [
        {"q": "a b&c=d/é?#", "page": 3, "ratio": 0.5, "flag": True},
        {"ids": ["1", "2", "x y"], "skip": None, "raw": b"\xff\x00", "n": [1, None, 2]},
        {},
        {"cursor": "eyJpZCI6IDEyfQ==", "": "empty name"},
    ]
    for params in queries:
        ours = _prepare(session, "GET", PLAIN_URL + "?fixed=1", params, None, {}, NO_SECRETS)
        _same(ours, _reference(session, "GET", PLAIN_URL + "?fixed=1", params, None, {}))
