"""The HTTP edge: a persistent retrying Session and a streamed body.

This is the only module that talks HTTP. It turns requests' and urllib3's
exceptions into :mod:`harvester.errors` ones, with any resolved secret
redacted from their messages.

Every request, first hop or redirect, is prepared here and its origin checked
on the prepared URL with the parser urllib3 connects with
(:func:`harvester.core.origin.check_request`) before a byte is sent: this is the one
choke point that keeps credentials on the job's origin.

urllib3's ``Retry`` handles what happens *before* a response is returned
(connect errors, retryable statuses, Retry-After). Errors inside the body are
never retried there: :func:`read_body` raises them and the page loop decides.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit
from urllib.request import getproxies

import requests
from requests.adapters import HTTPAdapter
from requests.utils import should_bypass_proxies
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    IncompleteRead,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.retry import Retry

from ..core.backoff import parse_retry_after
from ..core.origin import Origin, check_api_url, check_request, origin_of
from ..core.pagination import PageRequest, joined_url
from ..core.secrets import SecretSet
from ..core.spec import HttpSpec
from ..errors import (
    BadSecretValue,
    DeadlineExceeded,
    HTTPStatusError,
    PageError,
    PageTooLarge,
    RequestTimeout,
    TransportError,
    TruncatedBody,
    UnsafeURL,
)
from .prepare import RequestTemplates, prepare_whole

# Each thread holds one chunk (and what it becomes) at a time: 256 KiB instead of
# 1 MiB took ~2 MB off the peak RSS of a worker reading one 1 GiB page, and cost
# no throughput the benchmark could see (1 MB pages against a bare read: 0.92 and
# 0.96 with 1 MiB chunks, 0.97 and 0.96 with 256 KiB).
CHUNK_BYTES = 1 << 18
USER_AGENT = "harvester/0.1 (+https://github.com/harvester)"


_tries = threading.local()


class _CountingRetry(Retry):
    """urllib3's Retry, counting each failed try on this thread: ``attempts`` in
    ``_failed.jsonl`` is the number of requests really sent, urllib3's retries included."""

    def increment(self, *args: Any, **kwargs: Any) -> Retry:
        _tries.failed = getattr(_tries, "failed", 0) + 1
        return super().increment(*args, **kwargs)


class _Session(requests.Session):
    """A Session that never looks at a redirect itself: :func:`open_page` follows them,
    each hop checked. (requests parses a hostile Location even with
    ``allow_redirects=False``, to offer ``response.next``, and raises on some.)
    ``templates``: its requests, prepared but for the query."""

    def __init__(self) -> None:
        super().__init__()
        self.templates = RequestTemplates()

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(())


def build_session(http: HttpSpec, origin_url: str, pool_size: int = 4) -> requests.Session:
    """A Session whose adapter retries connection errors per ``[http]``.

    Statuses are *not* retried here: each attempt must pass the cluster-wide
    limiter and a Retry-After must pause the whole job, so the page loop retries
    them (see :mod:`harvester.engine.runner`).

    Proxy and CA-bundle settings are read from the environment once, here:
    with ``trust_env`` requests re-reads the whole environment on every request
    (measured: 12% of a worker's CPU on 10 KB pages).
    """
    retry = _CountingRetry(
        total=http.retries,
        connect=http.retries,
        read=http.retries,
        status=0,
        other=0,
        redirect=10,
        backoff_factor=http.backoff_factor,
        backoff_max=http.backoff_max,
        allowed_methods=None,  # POST pages are idempotent reads: retry them too.
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = _Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    session.trust_env = False
    proxies = getproxies()
    if proxies and not should_bypass_proxies(origin_url, no_proxy=proxies.get("no")):
        session.proxies = {k: v for k, v in proxies.items() if k != "no"}
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") \
        or True
    return session


def display_url(request: PageRequest) -> str:
    """The request's URL with its query, ``${...}`` templates left readable."""
    url = request.url.render()
    if not request.params:
        return url
    params = {k: v.render() if hasattr(v, "render") else v for k, v in request.params.items()}
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    query = urlencode(params, safe="${}")
    query = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class ResolvedRequest:
    """A page's request with its secrets filled in: never stored, never logged."""

    method: str
    url: str
    params: dict[str, Any]
    json: Any = None
    from_api: bool = False  # the URL is one the API named (a next URL or Link)


def job_origin(resolved_url: str) -> Origin:
    """The origin of the job's own URL, as requests prepares and urllib3 reads it."""
    try:
        prepared = requests.Request("GET", resolved_url).prepare().url
    except (requests.RequestException, ValueError) as exc:
        raise UnsafeURL(f"the job's url cannot be prepared: {type(exc).__name__}") from None
    return origin_of(prepared)


def check_sendable(headers: dict[str, str], url: str) -> None:
    """Refuse resolved values HTTP cannot carry, before anything is sent.

    Messages name the header, never its value: the value holds a secret.
    """
    for name, value in headers.items():
        try:
            value.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise BadSecretValue(
                f"header {name!r} holds a character HTTP headers cannot carry (not Latin-1,"
                f" at position {exc.start}); check the ${{...}} variables it uses") from None
        if any(c in value for c in "\r\n\x00"):
            raise BadSecretValue(f"header {name!r} holds a line break or NUL; check the"
                                 " ${...} variables it uses")
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise BadSecretValue("the URL holds a control character once its ${...} variables are"
                             " filled in; check them")


@dataclass(frozen=True)
class Response:
    status: int
    attempts: int  # requests sent for this page by urllib3, including its retries
    headers: Any
    raw: Any
    url: str  # the final URL (after redirects), resolved: never show it


MAX_REDIRECTS = 10


@contextmanager
def open_page(session: requests.Session, request: ResolvedRequest, *, headers: dict[str, str],
              http: HttpSpec, url: str, secrets: SecretSet, origin: Origin,
              allow_hosts: tuple[str, ...] = ()) -> Iterator[Response]:
    """Send ``request`` and yield its response, unread.

    ``url`` is the display URL used in errors. A non-2xx status raises
    :class:`HTTPStatusError`. Each hop is prepared, then its origin checked
    against ``origin`` on the prepared URL before it is sent. Redirects are
    followed here, not by requests: requests would forward the job's headers
    (all but Authorization) and a 307/308 body to any host.
    """
    method, target = request.method, request.url
    params, body = request.params or None, request.json
    what = "the next page" if request.from_api else "the job's url"
    attempts = 0
    for _ in range(MAX_REDIRECTS + 1):
        try:
            if request.from_api or what == "a redirect":
                check_api_url(target, what)
            prepared = _prepare(session, method, target, params, body, headers, secrets)
            check_request(prepared.url, origin, allow_hosts, what)
        except PageError as exc:
            exc.url, exc.attempts = exc.url or url, attempts
            raise
        _tries.failed = 0
        try:
            # What session.request would pass: the session never reads the environment
            # (trust_env is off, see build_session), so its own settings are all there is.
            response = session.send(prepared, allow_redirects=False, stream=True,
                                    verify=session.verify, cert=session.cert,
                                    proxies=session.proxies,
                                    timeout=(http.timeout_connect, http.timeout_read))
        except requests.RequestException as exc:
            attempts += max(_tries.failed, 1)
            raise _transport_error(exc, url, secrets, http, attempts) from None
        attempts += _tries.failed + 1
        if not response.is_redirect:
            break
        following = joined_url(response.url, response.headers["Location"])
        status = response.status_code
        response.close()
        what = "a redirect"
        if status in (301, 302, 303) and method != "HEAD":
            method, body = "GET", None  # what browsers and requests do
        target, params = following, None
    else:
        raise TransportError(f"more than {MAX_REDIRECTS} redirects", url=url, attempts=attempts)
    try:
        if not 200 <= response.status_code < 300:
            reason = secrets.redact(_printable(response.reason or ""))[:200]
            error = HTTPStatusError(f"HTTP {response.status_code} {reason}".strip(),
                                    url=url, status=response.status_code, attempts=attempts)
            error.retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise error
        yield Response(status=response.status_code, attempts=attempts,
                       headers=response.headers, raw=response.raw, url=response.url)
    finally:
        response.close()


def _prepare(session: requests.Session, method: str, target: str, params: Any, body: Any,
             headers: dict[str, str], secrets: SecretSet) -> requests.PreparedRequest:
    """What ``session.prepare_request`` makes of the request (see
    :mod:`harvester.edges.prepare`: ~0.1 ms of CPU less a page)."""
    try:
        if isinstance(session, _Session):
            return session.templates.prepare(session, method, target, params, body, headers)
        return prepare_whole(session, method, target, params, body, headers)
    except (requests.RequestException, ValueError) as exc:
        raise UnsafeURL(f"cannot prepare the request: {_describe(exc, secrets)}") from None


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def read_body(response: Response, *, deadline: float, http: HttpSpec, url: str,
              secrets: SecretSet) -> Iterator[bytes]:
    """Yield the decoded body in chunks as they arrive, enforcing the page deadline
    and ``max_page_bytes``.

    ``read1`` returns whatever bytes are there (up to ``CHUNK_BYTES``, decoded: urllib3
    inflates gzip/deflate/brotli in bounded steps), so a slow drip still reaches
    the deadline check; a silence longer than ``timeout_read`` raises from the
    socket itself.
    """
    raw = response.raw
    cap = http.max_page_bytes
    seen = 0
    where = {"url": url, "status": response.status, "attempts": response.attempts}
    while True:
        try:
            chunk = raw.read1(CHUNK_BYTES, decode_content=True)
        except ReadTimeoutError:
            raise DeadlineExceeded(f"stalled: no byte for {http.timeout_read:g} s (timeout_read)",
                                   **where) from None
        except (IncompleteRead, ProtocolError, SSLError, OSError) as exc:
            raise TruncatedBody(f"body cut short: {_describe(exc, secrets)}", **where) from None
        except DecodeError as exc:
            encoding = _printable(response.headers.get("Content-Encoding") or "")[:40]
            raise TruncatedBody(f"cannot decode the {encoding} body: {_describe(exc, secrets)}",
                                **where) from None
        if not chunk:
            return
        seen += len(chunk)
        if cap and seen > cap:
            raise PageTooLarge(f"the page is over max_page_bytes = {cap:,} decoded bytes"
                               f" ({_content(response)}); a compression bomb, or raise"
                               " http.max_page_bytes (0 = no cap)", **where)
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"page took longer than page_deadline = {http.page_deadline:g} s",
                                   **where)
        yield chunk


def _content(response: Response) -> str:
    kind = _printable(response.headers.get("Content-Type") or "no Content-Type")[:80]
    encoding = response.headers.get("Content-Encoding")
    return f"{kind}, {_printable(encoding)[:40]}" if encoding else kind


def _transport_error(exc: requests.RequestException, url: str, secrets: SecretSet,
                     http: HttpSpec, attempts: int) -> PageError:
    """What went wrong before a response, said plainly; urllib3's reason decides."""
    reason: BaseException = exc
    if exc.args and isinstance(exc.args[0], MaxRetryError) and exc.args[0].reason is not None:
        reason = exc.args[0].reason
    tries = f" ({attempts} request{'s' if attempts != 1 else ''} sent)"
    if isinstance(reason, ReadTimeoutError) or isinstance(exc, requests.ReadTimeout):
        return RequestTimeout(f"timed out: no response within timeout_read = {http.timeout_read:g}"
                              f" s{tries}", url=url, attempts=attempts)
    # urllib3 2 makes NewConnectionError (refused, DNS) a subclass of
    # ConnectTimeoutError: ask for it first, or "refused" would read as a timeout.
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError) \
            or isinstance(exc, requests.ConnectTimeout) and not isinstance(reason,
                                                                           NewConnectionError):
        return RequestTimeout(f"timed out connecting: no connection within timeout_connect ="
                              f" {http.timeout_connect:g} s{tries}", url=url, attempts=attempts)
    if isinstance(reason, NameResolutionError):
        kind = "cannot resolve the host name"
    elif isinstance(reason, NewConnectionError):
        kind = "cannot connect"
    elif isinstance(reason, SSLError) or isinstance(exc, requests.exceptions.SSLError):
        kind = "TLS error"
    elif isinstance(reason, ProtocolError):
        kind = "the API closed the connection without answering"
    else:
        kind = "request failed"
    return TransportError(f"{kind}{tries}: {_describe(reason, secrets)}", url=url,
                          attempts=attempts)


def _describe(exc: BaseException, secrets: SecretSet) -> str:
    # urllib3 messages embed the request path and query; secrets may be there.
    text = str(exc) or type(exc).__name__
    return secrets.redact(_printable(text))[:500]
