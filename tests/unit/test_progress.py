"""harvester.terminal.progress: the sliding-window Rate and the one-line describe()."""

from __future__ import annotations

import io

import pytest

from harvester.edges.ledger import JobState
from harvester.terminal.progress import Progress, Rate, describe


def state(**changes) -> JobState:
    values = dict(job_id="j", state="running", total=1000, open=False, committed=250, failed=5,
                  raw_bytes=12_345_678, gz_bytes=1_000_000, lines=250, created_at=0.0,
                  finished_at=None, in_flight=8, cancelled=False)
    values.update(changes)
    return JobState(**values)


# ------------------------------------------------------------------------ Rate

def test_rate_needs_two_samples():
    """With fewer than two samples the rate is zero."""
    rate = Rate()
    assert rate.per_second() == (0.0, 0.0)
    rate.add(100.0, 10, 1000)
    assert rate.per_second() == (0.0, 0.0)


def test_rate_between_first_and_last_sample():
    """Pages/s and bytes/s are the deltas over the window's span."""
    rate = Rate(window_seconds=10)
    rate.add(100.0, 0, 0)
    rate.add(102.0, 10, 4_000_000)
    rate.add(104.0, 40, 8_000_000)
    assert rate.per_second() == pytest.approx((10.0, 2_000_000.0))


def test_rate_window_drops_old_samples():
    """Samples older than the window no longer count: a burst long ago is forgotten."""
    rate = Rate(window_seconds=10)
    rate.add(0.0, 0, 0)
    rate.add(1.0, 1000, 0)  # a burst at the start
    for second in range(2, 31):
        rate.add(float(second), 1000 + (second - 1) * 2, 0)
    pages, _ = rate.per_second()
    assert pages == pytest.approx(2.0)
    assert rate.samples[0][0] >= 30.0 - 10.0 - 1.0


def test_rate_keeps_two_samples_after_a_long_gap():
    """A long pause never leaves fewer than two samples (the rate stays defined)."""
    rate = Rate(window_seconds=10)
    rate.add(0.0, 0, 0)
    rate.add(100.0, 50, 500)
    assert len(rate.samples) == 2
    assert rate.per_second() == pytest.approx((0.5, 5.0))


def test_rate_same_instant_does_not_divide_by_zero():
    """Two samples at the same time give a finite rate."""
    rate = Rate()
    rate.add(5.0, 0, 0)
    rate.add(5.0, 0, 0)
    assert rate.per_second() == (0.0, 0.0)


# -------------------------------------------------------------------- describe

def test_describe_running():
    """The line shows state, pages done/total, failed, MB, pages/s, MB/s and ETA."""
    line = describe(state(total=900), pages_per_second=7.5, bytes_per_second=2_500_000)
    assert line == ("running    pages 250/900 failed 5 | 12.3 MB | 7.5 pages/s 2.5 MB/s"
                    " | ETA 86s")


def test_describe_eta_uses_remaining_pages():
    """ETA = (total - committed - failed) / pages per second, rounded to seconds."""
    line = describe(state(total=10_000, committed=1_000, failed=0), 3.0, 0)
    assert line.endswith("ETA 3,000s")


def test_describe_open_total_has_plus():
    """A total still growing (chained styles) is shown with a '+'."""
    assert "pages 250/900+ " in describe(state(open=True, total=900), 1.0, 0.0)


@pytest.mark.parametrize("pps, changes", [
    (0.0, {}),
    (5.0, {"committed": 995, "failed": 5}),
])
def test_describe_eta_unknown_or_done(pps, changes):
    """No rate yet, or nothing left, shows ETA '-'."""
    assert describe(state(**changes), pps, 0.0).endswith("ETA -")


def test_describe_thousands_separators():
    """Large counts are grouped with commas."""
    line = describe(state(total=2_000_000, committed=1_234_567, failed=12_345,
                          raw_bytes=9_876_543_210), 1234.5, 0.0)
    assert "pages 1,234,567/" in line and " failed 12,345 " in line
    assert "9,876.5 MB" in line and "1,234.5 pages/s" in line


def test_describe_total_grouped_like_committed():
    """The total is grouped with commas like the done count next to it."""
    line = describe(state(total=2_000_000, committed=1_234_567), 1.0, 0.0)
    assert "pages 1,234,567/2,000,000 " in line


def test_describe_final_state():
    """A final job shows its state name."""
    line = describe(state(state="done", total=900, committed=900, failed=0), 0.0, 0.0)
    assert line.startswith("done       pages 900/900 failed 0")


# -------------------------------------------------------------------- Progress

def test_progress_plain_stream_prints_final_line():
    """On a non-terminal stream, a final state is always printed as a plain line."""
    stream = io.StringIO()
    progress = Progress(stream, plain_every=3600)
    progress.update(state(state="running"))
    progress.update(state(state="done", total=900, committed=900, failed=0))
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("done ") and "pages 900/900" in lines[-1]
    assert all(not line.startswith("done") for line in lines[:-1])


def test_progress_plain_stream_throttles_running_lines():
    """Non-final states are printed at most once per plain_every seconds."""
    stream = io.StringIO()
    progress = Progress(stream, plain_every=3600)
    for committed in range(10):
        progress.update(state(committed=committed))
    progress.close()
    assert len(stream.getvalue().splitlines()) <= 1
