"""The one exception tree of the harvester.

Every error the library raises derives from :class:`HarvesterError`, and each
carries the context a person needs to act on it::

    HarvesterError
    ├── JobSpecError            a job file is invalid (names the file and key); exit 2
    ├── JobNotFound             no job with that id in the ledger
    ├── OutputDirError          the output dir is unusable or holds another job
    ├── BrokerUnavailable       Redis does not answer (suggests --local)
    ├── LocalClusterError       --local could not start redis-server or workers
    ├── StorageError            a shard or segment could not be written or read
    ├── VerifyError             an output dir does not match its manifest
    ├── JobStateError           the job's state forbids what was asked (retry a running job)
    ├── WaitTimeout             Harvester.wait gave up before the job was final
    ├── OutputError             a job's output cannot be read as asked (pages of records)
    │   └── OutputNotSealed     ... or not yet: the job is not final
    ├── Abandoned               a stopping worker hands its page back unfinished
    ├── PageFailed              a page failed for good (recorded in the ledger): its task's FAILURE
    └── PageError               one page could not be harvested (has .retryable)
        ├── TransportError      connect/DNS/TLS failure, or retries exhausted
        │   └── RequestTimeout  no connection within timeout_connect, or no answer within timeout_read
        ├── HTTPStatusError     a non-2xx status after urllib3's retries
        ├── BodyError           the body arrived but cannot be committed
        │   ├── TruncatedBody   reset, short read, cut stream or gzip member
        │   ├── InvalidJSON     not complete, valid JSON (HTML error pages too)
        │   ├── DeadlineExceeded  stalled past timeout_read or over page_deadline
        │   └── PageTooLarge    over http.max_page_bytes decoded (a compression bomb)
        ├── RecordsNotFound     a 200 whose body has no array at records_path (a job error)
        ├── MissingSecretError  a ${VAR} the worker's environment lacks
        ├── BadSecretValue      a resolved ${VAR} that cannot be sent (e.g. non-Latin-1 in a header)
        ├── PaginationError     a pagination rule failed (e.g. total missing, value too large)
        │   └── UnsafeURL       a URL from the API that parsers read differently, or unparseable
        │       └── ForeignOrigin   a request that would leave the job's origin
        └── InternalError       an unexpected exception inside a page (a bug): the page fails

Dependencies' exceptions (requests, urllib3, redis, OSError) are translated
into these at the module that touches them, so callers never see them.
"""

from __future__ import annotations


class HarvesterError(Exception):
    """Root of every error raised by the harvester."""


class JobSpecError(HarvesterError):
    """A job file that cannot be run; the message names the file and the key."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None):
        self.path = path
        self.key = key
        where = ": ".join(part for part in (path, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class JobNotFound(HarvesterError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} in this Redis (is HARVEST_REDIS_URL the one the job ran on?"
                         " for a --local job, pass --local)")


class OutputDirError(HarvesterError):
    def __init__(self, message: str, *, path: str):
        self.path = path
        super().__init__(f"{path}: {message}")


class BrokerUnavailable(HarvesterError):
    def __init__(self, url: str, reason: str):
        self.url = url
        super().__init__(
            f"no Redis answers at {url} ({reason}). Start one, point HARVEST_REDIS_URL at it,"
            " or run with --local to use a private one."
        )


class LocalClusterError(HarvesterError):
    """The private redis-server or worker processes of --local failed."""


class StorageError(HarvesterError):
    """A segment, part or output file could not be written or read; ``retryable`` when
    trying again may work (a full disk freed, an object store's 503 or lost connection)."""

    def __init__(self, message: str, *, path: str | None = None, retryable: bool = True):
        self.path = path
        self.retryable = retryable
        super().__init__(f"{path}: {message}" if path else message)


class VerifyError(HarvesterError):
    """An output directory does not match its manifest; .problems lists each."""

    def __init__(self, directory: str, problems: list[str]):
        self.directory = directory
        self.problems = problems
        super().__init__(f"{directory}: " + "; ".join(problems))


class JobStateError(HarvesterError):
    """What was asked cannot be done in the job's state (e.g. retry a running job)."""

    def __init__(self, message: str, *, job_id: str, state: str):
        self.job_id = job_id
        self.state = state
        super().__init__(message)


class WaitTimeout(HarvesterError):
    """:meth:`Harvester.wait` gave up before the job was final; the job goes on."""

    def __init__(self, job_id: str, seconds: float, state: str):
        self.job_id = job_id
        self.seconds = seconds
        self.state = state
        super().__init__(f"job {job_id} is still {state} after {seconds:g} s")


class OutputError(HarvesterError):
    """A job's output cannot be read as asked (e.g. pages of a records-mode job)."""

    def __init__(self, message: str, *, job_id: str):
        self.job_id = job_id
        super().__init__(message)


class OutputNotSealed(OutputError):
    """A job's output was asked for before the job was sealed (only sealed parts are
    read: segments may still hold pages that will never be committed)."""

    def __init__(self, job_id: str, state: str):
        self.state = state
        super().__init__(f"job {job_id} is {state}: its output is readable once it is final",
                         job_id=job_id)


class Abandoned(HarvesterError):
    """The worker is stopping (SIGTERM): the page goes back to the queue unfinished."""

    def __init__(self, job_id: str, page: int):
        self.job_id = job_id
        self.page = page
        super().__init__(f"page {page} of {job_id} handed back: the worker is stopping")


class PageFailed(HarvesterError):
    """A page failed for good and the ledger records it so: the page task raises this
    to end in FAILURE, so Celery events (Flower, its /metrics) count the failure with
    its reason. The task's message is acked all the same; ``harvest retry`` re-runs it.

    ``message`` is the failure record's; it is scrubbed (again) here because this
    text travels in Celery's task-failed event, which no log formatter redacts.
    """

    def __init__(self, job_id: str, page: int, error_class: str, message: str):
        from .core.secrets import scrub

        self.job_id = job_id
        self.page = page
        self.error_class = error_class
        self.message = scrub(message)
        super().__init__(f"page {page} failed: {error_class}: {self.message}")

    def __reduce__(self) -> tuple:
        # Celery pickles a task's exception on its way to the event; the default
        # reduce would call __init__ with the formatted message alone.
        return type(self), (self.job_id, self.page, self.error_class, self.message)


class PageError(HarvesterError):
    """One page failed. ``retryable`` tells the page loop whether to try again."""

    retryable = True

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None,
                 attempts: int = 0):
        self.url = url
        self.status = status
        self.attempts = attempts
        super().__init__(message)

    @property
    def reason(self) -> str:
        """What `_failed.jsonl` records as the last status or error class."""
        return str(self.status) if self.status is not None else type(self).__name__


class TransportError(PageError):
    """No usable response: connect, DNS or TLS failure, or urllib3 gave up."""

    # urllib3 already spent the [http] retries on these.
    retryable = False


class RequestTimeout(TransportError):
    """No connection within timeout_connect, or no response within timeout_read."""


class HTTPStatusError(PageError):
    """A non-2xx status. Whether to retry depends on the job's ``retry_statuses``."""

    retryable = False
    retry_after: float | None = None  # seconds, from a Retry-After header


class BodyError(PageError):
    """The response started but its body cannot be committed."""


class TruncatedBody(BodyError):
    pass


class InvalidJSON(BodyError):
    pass


class DeadlineExceeded(BodyError):
    pass


class PageTooLarge(BodyError):
    retryable = False


class RecordsNotFound(PageError):
    """The body is valid JSON but has no array at records_path: the job does not fit
    the API, so trying again cannot help. The message lists what is there."""

    retryable = False


class MissingSecretError(PageError):
    retryable = False


class BadSecretValue(PageError):
    """A resolved secret that cannot be sent where the job puts it; nothing was sent."""

    retryable = False


class PaginationError(PageError):
    retryable = False


class UnsafeURL(PaginationError):
    """A URL the API named that could be read two ways, or not at all: never requested."""


class ForeignOrigin(UnsafeURL):
    """A request that would go to another origin than the job's: never sent."""


class InternalError(PageError):
    """An exception nobody expected inside a page. The page fails with it (never a
    hung job); ``error_class`` names the original exception."""

    retryable = False

    def __init__(self, message: str, *, error_class: str, url: str | None = None):
        self.error_class = error_class
        super().__init__(message, url=url)
