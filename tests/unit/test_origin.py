"""harvester.core.origin: where a request may go, decided by the parser that connects.

Each trick below once made (or could make) ``urllib.parse`` and urllib3 disagree
about the host; the harvester must refuse it or read it exactly as urllib3
does. The same tricks run end to end against a hostile server in
``tests/faults/test_hostile_api.py``.
"""

from __future__ import annotations

import pytest
import requests

from harvester.errors import ForeignOrigin, UnsafeURL
from harvester.core.origin import Origin, check_api_url, check_request, origin_of

JOB = Origin("http", "127.0.0.1", 18080)


def prepared(url: str) -> str:
    return requests.Request("GET", url).prepare().url


@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.2:18080\\@127.0.0.1:18080/steal", "backslash"),
    ("http://127.0.0.2:18080\\\\127.0.0.1:18080/", "backslash"),
    ("http://127.0.0.1:18080/x?y=\\@a", "backslash"),
    ("http://127.0.0.1:18080@127.0.0.2:18080/x", "user info"),
    ("http://user:pw@127.0.0.1:18080/x", "user info"),
    ("http://127.0.0.%32:18080/x", "percent sign"),
    ("http://[::1%25eth0]:18080/x", "percent sign"),
    ("http://[::1/x", "cannot be parsed"),
    ("http://127.0.0.1:99999/x", "cannot be parsed"),
    ("http://127.0.0.1:18080\t/x", "tab"),
    ("http://127.0.0.1\n.evil:18080/x", "line feed"),
    ("http://127.0.0.1 :18080/x", "space"),
    ("http://\u0435xample.com/", "non-ASCII host"),
    ("ftp://127.0.0.1/x", "scheme"),
    ("http:/127.0.0.2/x", "no host"),
])
def test_urls_the_parsers_read_differently_are_refused(url, why):
    """Backslash, '@', a percent-encoded host, an IPv6 zone, control characters, spaces,
    non-ASCII hosts, bad ports and missing hosts: refused with the reason, never guessed."""
    with pytest.raises(UnsafeURL) as info:
        check_api_url(url)
    assert why in str(info.value)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:18080/next",
    "http://127.0.0.1:18080/a/../b?c=d#e",
    "HTTP://127.0.0.1:18080/x",
])
def test_the_jobs_own_origin_passes(url):
    """Same scheme, host and port (as urllib3 reads the prepared URL): allowed."""
    check_api_url(url)
    assert check_request(prepared(url), JOB) == JOB


def test_mixed_case_host_and_default_port_spelled_out_are_the_same_origin():
    """Host case is folded and an explicit default port equals the implicit one."""
    job = origin_of(prepared("https://API.Example.com/v1"))
    assert job == Origin("https", "api.example.com", 443)
    for url in ("https://api.example.COM:443/v1?page=2", "https://api.example.com/v1"):
        check_api_url(url)
        assert check_request(prepared(url), job) == job


@pytest.mark.parametrize("url", [
    "http://127.0.0.1.:18080/x",      # trailing dot: another spelling, refused
    "http://2130706433:18080/x",      # decimal IP of 127.0.0.1
    "http://0x7f.1:18080/x",          # hex shorthand
    "http://localhost:18080/x",       # another name for the same machine
    "https://127.0.0.1:18080/x",      # other scheme
    "http://127.0.0.1:18081/x",       # other port
    "http://127.0.0.2:18080/x",       # other host
])
def test_other_spellings_and_other_origins_are_foreign(url):
    """Anything but the job's origin as spelt is another origin: no request is sent, and
    the message names both origins."""
    with pytest.raises(ForeignOrigin) as info:
        check_request(prepared(url), JOB)
    assert "127.0.0.1:18080" in str(info.value) and "no request" in str(info.value)


def test_allow_hosts_lets_named_hosts_through():
    """A host listed in allow_hosts may be followed, on http or https."""
    assert check_request(prepared("https://cdn.example.com/p/2"), JOB,
                         ("CDN.example.com",)).host == "cdn.example.com"
    with pytest.raises(ForeignOrigin):
        check_request(prepared("https://other.example.com/p/2"), JOB, ("cdn.example.com",))


def test_the_check_reads_what_urllib3_connects_to():
    """The backslash trick, had it got past check_api_url: the prepared URL's host is
    127.0.0.2, which check_request refuses (the old urlsplit check saw 127.0.0.1)."""
    sneaky = prepared("http://127.0.0.2:18080\\@127.0.0.1:18080/steal")
    with pytest.raises(ForeignOrigin):
        check_request(sneaky, JOB)


def test_very_long_urls_are_refused():
    """A next URL over 16 KiB is refused with its length, not followed."""
    with pytest.raises(UnsafeURL) as info:
        check_api_url("http://127.0.0.1:18080/?" + "a" * 20000)
    assert "characters long" in str(info.value)
