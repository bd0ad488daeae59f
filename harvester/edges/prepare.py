"""A page's request, prepared as requests' own ``Session.prepare_request`` prepares
it, for less CPU. No I/O: the HTTP edge (:mod:`harvester.edges.fetch`) sends what
this builds, and turns its errors into the project's.

requests' steps are taken in requests' order, minus the merges a harvest never
needs: no session auth, params or hooks are set, the environment is never read
(``trust_env`` is off) and the cookie jar is read only once the API has set a
cookie. A fan-out job sends one request again and again with another query, so a
bodiless request starts from a template of its method, URL and headers, prepared
once; each page then costs requests' URL step alone. ``tests/unit/test_request_prep.py``
holds every path to what requests itself prepares.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

import requests
from requests.structures import CaseInsensitiveDict


class RequestTemplates:
    """The few bodiless requests one session sends again and again, prepared but for
    the query (measured: 105 -> 68 us a request)."""

    MOST = 8

    def __init__(self) -> None:
        self._templates: OrderedDict[tuple, requests.PreparedRequest] = OrderedDict()

    def __len__(self) -> int:
        return len(self._templates)

    def prepare(self, session: requests.Session, method: str, target: str, params: Any,
                body: Any, headers: dict[str, str]) -> requests.PreparedRequest:
        """The request; raises what requests raises for it."""
        if body is not None:
            return prepare_whole(session, method, target, params, body, headers)
        key = (method, target, tuple(headers.items()))
        template = self._templates.get(key)
        if template is None:
            template = prepare_whole(session, method, target, None, None, headers,
                                     cookies=False)
            self._templates[key] = template
            if len(self._templates) > self.MOST:
                self._templates.popitem(last=False)
        prepared = template.copy()
        prepared.prepare_url(target, encoded_query(params))
        if session.cookies:
            prepared.prepare_cookies(session.cookies)
        return prepared


def encoded_query(params: Any) -> Any:
    """A query mapping encoded as requests' ``_encode_params`` encodes it, minus its
    ``isinstance`` check against a runtime Protocol first (~25 us a request on Python
    3.11); anything but a dict is left to requests."""
    if not isinstance(params, dict):
        return params
    pairs = []
    for key, values in params.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        for value in values:
            if value is not None:
                pairs.append((key.encode() if isinstance(key, str) else key,
                              value.encode() if isinstance(value, str) else value))
    return urlencode(pairs, doseq=True)


def prepare_whole(session: requests.Session, method: str, target: str, params: Any,
                  body: Any, headers: dict[str, str], *,
                  cookies: bool = True) -> requests.PreparedRequest:
    """requests' steps, in requests' order (a template leaves the cookies out: the API
    may set one later)."""
    prepared = requests.PreparedRequest()
    prepared.prepare_method(method)
    prepared.prepare_url(target, params)
    merged = CaseInsensitiveDict(session.headers)
    merged.update(headers)
    prepared.prepare_headers(merged)
    if cookies and session.cookies:
        prepared.prepare_cookies(session.cookies)
    prepared.prepare_body(None, None, body)
    prepared.prepare_auth(None, target)  # user:password in the job's own url
    return prepared
