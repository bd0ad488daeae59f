"""Runs of pages per task message: how pages are grouped and when a page goes alone."""

from __future__ import annotations

import pytest

from harvester.core.runs import PageCost, default_run_pages, split_runs


@pytest.mark.parametrize(("count", "most", "sizes"), [
    (0, 8, []), (1, 8, [1]), (8, 8, [8]), (9, 8, [5, 4]), (10, 8, [5, 5]),
    (17, 8, [6, 6, 5]), (256, 8, [8] * 32), (5, 1, [1] * 5), (3, 0, [1, 1, 1]),
])
def test_pages_split_into_even_runs_in_order(count, most, sizes):
    """split_runs keeps every page once, in order, in runs no longer than ``most`` and
    as even as possible (9 at 8 is 5 + 4: no run of one waits behind a long one)."""
    pages = list(range(100, 100 + count))
    runs = split_runs(pages, most)
    assert [len(run) for run in runs] == sizes
    assert [page for run in runs for page in run] == pages


def test_the_default_run_size_follows_the_window():
    """About 32 runs fill the window, so 32 threads stay busy: 256 -> 8, the default
    1024 -> 32, bounded 1..32."""
    assert default_run_pages(256) == 8
    assert default_run_pages(1024) == 32
    assert default_run_pages(16) == 1
    assert default_run_pages(1 << 20) == 32


def test_runs_hold_about_a_second_of_work():
    """Runs are as long as fit in about a second of work: fast pages (10 KB or 1 MB
    alike) travel ``most`` to a message; pages of 0.4 s go two at a time, pages of two
    seconds alone; and back to long runs when pages are fast again."""
    cost = PageCost()
    assert cost.run_pages(32) == 32  # nothing known yet
    cost.add(0.01, 10_000)
    assert cost.run_pages(32) == 32
    big = PageCost()
    big.add(0.02, 1_100_000)
    assert big.run_pages(32) == 32, "size alone never splits a run"
    for _ in range(40):
        cost.add(0.4, 10_000)
    assert cost.run_pages(32) == 2
    slow = PageCost()
    slow.add(2.0, 100)
    assert slow.run_pages(32) == 1
    for _ in range(60):
        slow.add(0.01, 10_000)
    assert slow.run_pages(32) == 32
