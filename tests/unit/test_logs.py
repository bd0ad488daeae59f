"""The log pipeline's pure parts: repeats held back (harvester.logs.QuietRepeats), and
HARVEST_LOG_FORMAT=json writing one JSON object per line whatever is logged."""

from __future__ import annotations

import json
import logging
import sys
import threading
import warnings

import pytest
import structlog
from structlog.testing import capture_logs

from harvester import logs
from harvester.logs import QuietRepeats
from harvester.core.secrets import scrub


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _quiet(window: float = 60.0) -> tuple[QuietRepeats, Clock]:
    clock = Clock()
    return QuietRepeats(window, clock=clock), clock


def test_a_condition_is_logged_once_whatever_its_context_then_its_end_with_the_count():
    """Eight page threads and the heartbeat each logging `redis.unavailable` (other
    pages, other retry delays) make one line; `redis.available` goes through with
    `repeated` = how many were held back, and the next outage is news again at once."""
    quiet, clock = _quiet()
    log = structlog.get_logger("harvester.ledger")
    with capture_logs(processors=[quiet]) as captured:
        for page in range(1, 10):
            log.warning("redis.unavailable", reason="Connection refused", retry_in=0.1 * page,
                        page=page)
            clock.now += 0.5
        log.info("redis.available", down_seconds=4.5)
        clock.now += 1
        log.warning("redis.unavailable", reason="Connection refused", page=3)
    assert [(e["event"], e.get("page"), e.get("repeated")) for e in captured] == [
        ("redis.unavailable", 1, None), ("redis.available", None, 8),
        ("redis.unavailable", 3, None)]


def test_a_long_condition_repeats_once_per_window_with_the_count():
    """Redis away for five minutes: one line at once, then one a minute carrying how
    many were held back, not one every two seconds."""
    quiet, clock = _quiet(window=60)
    log = structlog.get_logger("harvester.ledger")
    with capture_logs(processors=[quiet]) as captured:
        for _ in range(150):  # every 2 s for 300 s
            log.warning("redis.unavailable", reason="Connection refused")
            clock.now += 2
    assert [e.get("repeated") for e in captured] == [None, 29, 29, 29, 29]


def test_other_harvester_events_are_never_held_back():
    """Events that are not conditions pass untouched, however alike: each failed page is
    its own news."""
    quiet, _ = _quiet()
    log = structlog.get_logger("harvester.page")
    with capture_logs(processors=[quiet]) as captured:
        for _ in range(5):
            log.error("page.failed", error="HTTPStatusError", page=7)
            log.warning("page.retry", delay=0.1)
    assert len(captured) == 10 and not any("repeated" in e for e in captured)


def _record(message: str, *args: object, level: int = logging.ERROR,
            name: str = "celery.worker.consumer.consumer") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_third_party_lines_that_differ_only_in_numbers_are_held_back():
    """kombu's "Cannot connect ... Trying again in N seconds... (K/None)" passes once;
    its repeats are dropped until the window has passed, when one passes with
    `repeated`; another message, another logger, or an INFO line is not held back."""
    quiet, clock = _quiet(window=60)
    cannot = "consumer: Cannot connect to %s: %s.\nTrying again in %s seconds... (%s/None)\n"
    verdicts = []
    for attempt in range(1, 6):
        verdicts.append(quiet.filter(_record(cannot, "redis://:**@127.0.0.1:6379/0",
                                             "Error 111", f"{2.0 * attempt:.2f}", attempt)))
        clock.now += 2 * attempt
    assert verdicts == [True, False, False, False, False]
    assert quiet.filter(_record("consumer: Connection to broker lost.", level=logging.WARNING))
    assert quiet.filter(_record(cannot, "x", "y", "1", 1, name="kombu.other"))
    assert all(quiet.filter(_record("Restoring %d unacknowledged message(s)", n,
                                    level=logging.INFO)) for n in range(5))
    clock.now += 60
    later = _record(cannot, "redis://:**@127.0.0.1:6379/0", "Error 111", "30.00", 9)
    assert quiet.filter(later) and later.repeated == 4


def test_lines_that_differ_only_in_a_task_id_are_held_back():
    """kombu's "Couldn't ack '<task id>'" for every task that finished while Redis was
    away is one line (with its traceback), not one per task."""
    quiet, _ = _quiet()
    ids = ["7e5ef150-27db-4044-b991-f0529b166dbe", "1f392649-cc33-4386-83ef-d72a7c232e3b"]
    verdicts = [quiet.filter(_record("Couldn't ack %r, reason:%r", task_id, "network",
                                     level=logging.CRITICAL, name="celery.worker.request"))
                for task_id in ids]
    assert verdicts == [True, False]


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    yield
    root.handlers[:], level, sys.excepthook, threading.excepthook = saved
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def test_json_format_writes_one_json_object_per_line(capsys, restore_logging):
    """With the json format a multi-line warning, a multi-line message, a traceback and a
    held-back repeat each leave as exactly one line that parses as a JSON object, the
    traceback inside it; nothing else is written."""
    logs.configure("json", level="INFO")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("first line\nsecond line", UserWarning, stacklevel=1)
    logging.getLogger("celery.test").warning("several\nlines\n  of text")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("celery.test").exception("it failed")
        structlog.get_logger("harvester.test").exception("page.crashed", page=3)
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in entries)
    assert [e["logger"] for e in entries] == ["py.warnings", "celery.test", "celery.test",
                                              "harvester.test"]
    # (scrub: other tests in this process may have registered short secrets)
    assert scrub("second line") in entries[0]["event"]
    assert scrub("ValueError: boom") in entries[2]["exception"]
    assert scrub("ValueError: boom") in entries[3]["exception"] and entries[3]["page"] == 3


def test_raw_json_line_is_one_json_object(capfd):
    """What Celery's signal handlers say (written past logging) is a JSON line too."""
    logs.raw_json_line("worker: Warm shutdown (MainProcess)", level="warning",
                       logger="celery.apps.worker")
    line = capfd.readouterr().err
    assert line.count("\n") == 1
    entry = json.loads(line)
    assert (entry["event"], entry["level"], entry["logger"]) == (
        scrub("worker: Warm shutdown (MainProcess)"), "warning", "celery.apps.worker")


def test_console_format_renders_each_harvester_event_once_scrubbed(capsys, restore_logging):
    """The default console format: a harvester event is rendered in structlog's chain
    and leaves as that one line, with any resolved secret replaced by ***; alike
    warnings of different pages all pass (the third-party repeat filter does not see
    them as repeats), and an exception's traceback follows its line."""
    from harvester.core.secrets import register

    register(["s3cr3t-console-token"])
    logs.configure("console", level="INFO")
    log = structlog.get_logger("harvester.test")
    for page in (1, 2, 3):
        log.warning("page.retry", page=page, message="HTTP 500 for ?key=s3cr3t-console-token")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("page.crashed", page=4)
    log.debug("page.hidden", page=5)
    err = capsys.readouterr().err
    lines = err.splitlines()
    # (other tests in this process may have registered short secrets: expected text is
    # scrubbed the same way)
    retries = [line for line in lines if scrub("page.retry") in line]
    assert len(retries) == 3 and all(scrub("[warning  ]") in line for line in retries)
    assert [scrub(f"page={page}") in line for page, line in zip((1, 2, 3), retries)] == [True] * 3
    assert "s3cr3t-console-token" not in err
    assert all("***" in line for line in retries)
    crashed = lines.index(next(line for line in lines if scrub("page.crashed") in line))
    assert scrub("Traceback (most recent call last):") in lines[crashed + 1]
    assert scrub("ValueError: boom") in err and scrub("page.hidden") not in err
