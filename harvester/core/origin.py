"""Where a request may go: the job's origin, read by the parser that connects.

Credentials go only to the job's own origin (or a host the job lists in
``pagination.allow_hosts``). Python has two URL parsers that disagree on hostile
input: ``urllib.parse.urlsplit`` reads ``http://a\\@b/`` as host ``b`` while
urllib3, which opens the connection for requests, reads host ``a``. So:

- the origin is taken with urllib3's ``parse_url`` from the URL requests
  prepared, the very string urllib3 connects with (:func:`check_request`);
- text the API sent (a next URL, a Link target, a redirect) is refused when it
  holds what makes the parsers part ways or hides a host: backslashes,
  control characters or spaces, user info (``user@``), a percent sign or an IPv6
  zone in the host, a host that is not valid (:func:`check_api_url`).

A host is compared as urllib3 normalises it (lower case, IDNA) and as spelt:
another spelling of the same machine (a trailing dot, a decimal IP, a
percent-escape) is another origin and is refused, never guessed at.

Pure functions: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ..errors import ForeignOrigin, UnsafeURL

DEFAULT_PORTS = {"http": 80, "https": 443}
# C0 controls, space, DEL, backslash: each reads differently in some parser.
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
MAX_URL_CHARS = 16 * 1024


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def origin_of(url: str) -> Origin:
    """The origin urllib3 connects to for ``url``; :class:`UnsafeURL` if it has none."""
    try:
        parsed = parse_url(url)
    except (LocationParseError, ValueError) as exc:
        raise UnsafeURL(f"cannot be parsed: {_first_line(exc)}") from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise UnsafeURL(f"scheme {scheme or '(none)'!r} is not http or https")
    if not parsed.host:
        raise UnsafeURL("has no host")
    return Origin(scheme, parsed.host.lower(), parsed.port or DEFAULT_PORTS[scheme])


def check_api_url(url: str, what: str = "a next URL") -> None:
    """Refuse an absolute URL from the API that parsers could read differently.

    Raises :class:`UnsafeURL` naming the reason; never returns a guess. (A
    relative link is joined to the page's URL first; one holding a forbidden
    character is kept unjoined, so this refuses it.)
    """
    if len(url) > MAX_URL_CHARS:
        raise UnsafeURL(f"{what} is {len(url):,} characters long (over {MAX_URL_CHARS:,})")
    bad = _FORBIDDEN.search(url)
    if bad:
        raise UnsafeURL(f"{what} holds {_describe_char(bad.group())}, which URL parsers read"
                        " differently; no request was sent")
    if not url.isascii():
        # requests would percent-encode the path, but a non-ASCII host is IDNA-mapped
        # by some parsers and refused by others.
        host_part = url.split("//", 1)[1].split("/", 1)[0] if "//" in url else ""
        if not host_part.isascii():
            raise UnsafeURL(f"{what} has a non-ASCII host")
    try:
        split = urlsplit(url)
        split_host, split_port = split.hostname, split.port
    except ValueError as exc:
        raise UnsafeURL(f"{what} cannot be parsed: {exc}") from None
    netloc = split.netloc
    if "@" in netloc:
        raise UnsafeURL(f"{what} carries user info ('user@host'); no credentials are sent"
                        " to a URL the API names")
    if "%" in netloc:
        raise UnsafeURL(f"{what} has a percent sign in its host (an escape or an IPv6 zone)")
    theirs = origin_of(url)
    ours_host = (split_host or "").lower()
    if theirs.host.strip("[]") != ours_host or (split_port or DEFAULT_PORTS.get(
            split.scheme.lower(), 0)) != theirs.port:
        raise UnsafeURL(f"{what} names host {ours_host!r} to one URL parser and"
                        f" {theirs.host!r} to another")


def check_request(url: str, job: Origin, allow_hosts: tuple[str, ...] = (),
                  what: str = "the next page") -> Origin:
    """The origin a prepared request connects to, if the job may send there.

    ``url`` must be the URL requests prepared (what urllib3 will parse to
    connect). Raises :class:`ForeignOrigin` for any other origin.
    """
    target = origin_of(url)
    if target == job:
        return target
    allowed = {host.lower().rstrip(".") for host in allow_hosts}
    if target.host in allowed:
        return target
    raise ForeignOrigin(
        f"{what} is on another origin: {target} is not the job's origin {job}; no request"
        " was sent there (list the host in pagination.allow_hosts to follow it)")


def _describe_char(char: str) -> str:
    names = {"\\": "a backslash", " ": "a space", "\t": "a tab", "\r": "a carriage return",
             "\n": "a line feed", "\x00": "a NUL byte", "\x7f": "a DEL byte"}
    return names.get(char, f"the control character {char!r}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
