"""PageFailed, the exception a page task ends with when its page failed for good: what
Celery does with it on its way to the task-failed event (harvester.errors)."""

from __future__ import annotations

import pickle

from celery.utils.serialization import get_pickleable_exception
from celery.utils.saferepr import saferepr

from harvester.core import secrets
from harvester.errors import HarvesterError, PageFailed


def test_page_failed_names_page_class_and_message_and_survives_celery_pickling():
    """str() is "page N failed: Class: message"; the typed attributes stay; Celery's
    pickle check keeps the exception as it is (not a HarvesterError stand-in), so the
    event's repr names PageFailed."""
    exc = PageFailed("job-1", 7, "HTTPStatusError", "HTTP 404 Not Found")
    assert str(exc) == "page 7 failed: HTTPStatusError: HTTP 404 Not Found"
    assert isinstance(exc, HarvesterError)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.job_id, copy.page, copy.error_class, copy.message, str(copy)) == (
        "job-1", 7, "HTTPStatusError", "HTTP 404 Not Found", str(exc))
    assert get_pickleable_exception(exc) is exc
    assert saferepr(exc) == "PageFailed('page 7 failed: HTTPStatusError: HTTP 404 Not Found')"


def test_page_failed_scrubs_its_message():
    """A resolved secret that reached the message is redacted by the exception itself:
    its text goes into Celery's event, which no log formatter scrubs."""
    secret = "tok-page-failed-Zx81"
    secrets.register([secret])
    exc = PageFailed("job-1", 3, "HTTPStatusError", f"HTTP 401 denied for Bearer {secret}")
    assert secret not in str(exc) and secret not in repr(exc) and secret not in exc.message
    assert secret not in repr(pickle.loads(pickle.dumps(exc)))


def test_the_terminal_names_the_commonest_failure_reasons():
    """After a job with failed pages, `harvest run` says why: the commonest reasons
    first, each with how many pages share it and the lowest such page; at most three,
    then how many other reasons there are; long messages are cut."""
    from harvester.terminal.watch import failure_reasons

    def record(error_class, message):
        return {"error_class": error_class, "message": message}

    failures = {9: record("HTTPStatusError", "HTTP 401 Unauthorized"),
                4: record("HTTPStatusError", "HTTP 401 Unauthorized"),
                7: record("MissingSecretError", "environment variable T is not set"),
                2: record("InvalidJSON", "x" * 1000),
                3: record("TruncatedBody", "cut")}
    lines = failure_reasons(failures)
    assert lines[0] == "HTTPStatusError: HTTP 401 Unauthorized (2 pages, e.g. page 4)"
    assert lines[1] == "InvalidJSON: " + "x" * 300 + " (page 2)"
    assert lines[2] == "TruncatedBody: cut (page 3)"
    assert lines[3] == "... and 1 other reason(s)"
    assert failure_reasons({}) == []
