"""The ledger's run scripts on a private redis-server: a run of pages is started and
committed with one script call each, every page keeping its own state; the scripts
are safe to run twice (a lost reply) and a page another worker committed stays theirs."""

from __future__ import annotations

import pytest

from harvester.core.job import parse_job
from harvester.core.layout import Commit
from harvester.edges.ledger import Ledger

JOB = "runjob"


@pytest.fixture
def ledger(redis_server):
    ledger = Ledger(redis_server.client(), lease_seconds=15)
    yield ledger
    ledger.redis.close()


def _create(ledger: Ledger, *, total: int, window: int) -> list[int]:
    spec = parse_job({"job": {"name": "runs", "url": "http://127.0.0.1:9/items"},
                      "pagination": {"style": "page", "pages": total},
                      "output": {"dir": "out"}})
    return ledger.create_job(JOB, spec, total=total, open_ended=False, window=window)


def _commit(page: int, segment: int = 1) -> Commit:
    return Commit(page=page, segment=segment, offset=page * 100, length=100, raw_bytes=1000,
                  lines=1)


def _commands(ledger: Ledger) -> int:
    return int(ledger.redis.info("stats")["total_commands_processed"])


def test_a_run_commits_each_page_and_refills_the_window_once(ledger):
    """Window 16 of 100 pages: the 8 pages of a run commit in one call; the counters
    move by 8 pages' worth, their leases, tries and owners are gone, and the window is
    refilled with the next 8 pages, claimed once for the whole run."""
    assert _create(ledger, total=100, window=16) == list(range(1, 17))
    starts = ledger.start_pages(JOB, list(range(1, 9)), "w1")
    assert all(start.run and start.tries == 1 for start in starts.values())
    outcome, claimed, pages = ledger.commit_run(JOB, [_commit(p) for p in range(1, 9)])
    assert outcome == "committed"
    assert claimed == list(range(17, 25))
    assert pages == {p: "committed" for p in range(1, 9)}
    state = ledger.state(JOB)
    assert (state.committed, state.raw_bytes, state.gz_bytes, state.lines) == (8, 8000, 800, 8)
    assert state.in_flight == 16
    redis = ledger.redis
    for page in range(1, 9):
        assert redis.zscore(ledger.key(JOB, "lease"), page) is None
        assert not redis.hexists(ledger.key(JOB, "tries"), page)
        assert not redis.hexists(ledger.key(JOB, "owner"), page)
    assert {c.page for c in ledger.commits(JOB)} == set(range(1, 9))


def test_a_run_replayed_after_a_lost_reply_stands_with_its_claims(ledger):
    """The same commit run twice (its first reply lost): the second call commits
    nothing more, counts nothing twice (pages, bytes, requests), claims nothing new, and hands back the pages
    the first call claimed, so the caller can still send them."""
    _create(ledger, total=100, window=16)
    ledger.start_pages(JOB, list(range(1, 9)), "w1")
    run = [_commit(p) for p in range(1, 9)]
    first = ledger.commit_run(JOB, run, requests=11)
    again = ledger.commit_run(JOB, run, requests=11)
    assert again == first
    state = ledger.state(JOB)
    assert (state.committed, state.raw_bytes) == (8, 8000)
    assert ledger.field(JOB, "requests") == "11"  # the run's requests, counted once
    assert state.in_flight == 16


def test_a_page_another_worker_committed_stays_theirs(ledger):
    """Page 3 was committed by another worker (another location): in this run it is a
    duplicate, left as it was, and the run's other pages commit."""
    _create(ledger, total=100, window=16)
    ledger.start_pages(JOB, list(range(1, 9)), "w1")
    assert ledger.commit(JOB, _commit(3, segment=2))[0] == "committed"
    outcome, _, pages = ledger.commit_run(JOB, [_commit(p) for p in range(1, 9)])
    assert outcome == "committed"
    assert pages[3] == "duplicate"
    assert all(pages[p] == "committed" for p in range(1, 9) if p != 3)
    standing = {c.page: c for c in ledger.commits(JOB)}
    assert standing[3].segment == 2
    assert ledger.state(JOB).committed == 8


def test_the_run_that_resolves_the_last_pages_hands_over_to_the_finalizer(ledger):
    """10 pages, window 16: pages 1-9 commit one way or another, then the run of page 10
    returns 'last' and the job is finalizing; a run of a cancelled job is 'closed'."""
    _create(ledger, total=10, window=16)
    ledger.start_pages(JOB, list(range(1, 11)), "w1")
    assert ledger.commit_run(JOB, [_commit(p) for p in range(1, 10)])[0] == "committed"
    outcome, claimed, pages = ledger.commit_run(JOB, [_commit(10)])
    assert (outcome, claimed, pages) == ("last", [], {10: "committed"})
    assert ledger.state(JOB).state == "finalizing"

    ledger.forget(JOB)
    _create(ledger, total=10, window=16)
    ledger.start_pages(JOB, [1, 2], "w1")
    assert ledger.cancel(JOB) in ("cancelled", "finalizing")
    assert ledger.commit_run(JOB, [_commit(1), _commit(2)]) == \
        ("closed", [], {1: "closed", 2: "closed"})


def test_starting_a_run_skips_what_is_not_its_own(ledger):
    """A run of pages 1-6: page 2 is committed, page 3 failed for good, page 4 is leased
    to another live worker; pages 1, 5 and 6 are leased to this worker with their tries
    counted (page 5's second try), all in one call."""
    _create(ledger, total=100, window=16)
    ledger.start_pages(JOB, [2, 3, 5], "w1")
    ledger.commit(JOB, _commit(2))
    ledger.fail(JOB, 3, {"page": 3, "error": "404"})
    ledger.start_pages(JOB, [4], "w2")
    # Only its own page goes back: page 4 is w2's.
    assert ledger.release_pages(JOB, [5, 4], "w1") == [5]
    before = _commands(ledger)
    starts = ledger.start_pages(JOB, [1, 2, 3, 4, 5, 6], "w1")
    scripted = _commands(ledger) - before - 1  # the INFO call counts itself
    assert [starts[p].reason for p in (2, 3, 4)] == ["committed", "failed", "running elsewhere"]
    assert [(p, starts[p].run, starts[p].tries) for p in (1, 5, 6)] == \
        [(1, True, 1), (5, True, 2), (6, True, 1)]
    owners = ledger.redis.hgetall(ledger.key(JOB, "owner"))
    assert {p: owners.get(str(p)) for p in (1, 4, 5, 6)} == \
        {1: "w1", 4: "w2", 5: "w1", 6: "w1"}
    # One call, and a dozen commands inside it whatever the run's length (not per page).
    assert scripted <= 14, scripted


def test_a_run_costs_the_same_commands_whatever_its_length(ledger):
    """Starting and committing a run of 4 and a run of 32 pages take the same number of
    Redis commands (Lua's included), within a few: the cost is per run, not per page."""
    _create(ledger, total=1000, window=64)

    def cost(pages: list[int]) -> int:
        before = _commands(ledger)
        ledger.start_pages(JOB, pages, "w1")
        ledger.commit_run(JOB, [_commit(p) for p in pages])
        return _commands(ledger) - before - 1

    short, long = cost(list(range(1, 5))), cost(list(range(5, 37)))
    assert long - short <= 4, (short, long)


def test_claims_stored_with_a_commit_keep_its_bucket_compact_and_replay_whole(ledger):
    """A run whose commit claims scattered pages (two waiting in the todo list, then
    a stretch of the plan) stores them as ranges: a replay of its lost reply hands back
    exactly the pages claimed, in order, and every commit bucket of a 2,000-page run of
    runs stays a listpack (one long value would make its whole hash a table)."""
    _create(ledger, total=3000, window=64)
    # Pages 40 and 50 wait in the todo list, unleased, as a retry leaves failed pages:
    # the window has room for them and 32 more once the run commits.
    ledger.redis.zrem(ledger.key(JOB, "lease"), 40, 50)
    ledger.redis.rpush(ledger.key(JOB, "todo"), 40, 50)
    ledger.start_pages(JOB, list(range(1, 33)), "w1")
    run = [_commit(p) for p in range(1, 33)]
    first = ledger.commit_run(JOB, run)
    assert first[1] == [40, 50, *range(65, 97)]
    assert ledger.commit_run(JOB, run) == first
    raw = ledger.redis.hget(ledger.key(JOB, "c:0"), "32")
    assert raw.endswith("|40,50,65-96"), raw

    # commit.lua replays a single page's lost reply the same way.
    ledger.start_pages(JOB, [33], "w1")
    single = ledger.commit(JOB, _commit(33))
    assert single[0] == "committed" and single[1]
    assert ledger.commit(JOB, _commit(33)) == single

    for first_page in range(34, 2000, 32):
        pages = [p for p in range(first_page, first_page + 32) if p not in (40, 50)]
        ledger.start_pages(JOB, pages, "w1")
        assert ledger.commit_run(JOB, [_commit(p) for p in pages])[0] == "committed"
    for bucket in ledger.redis.smembers(ledger.key(JOB, "buckets")):
        key = ledger.key(JOB, f"c:{bucket}")
        assert ledger.redis.object("encoding", key) == "listpack", bucket


def test_a_sealed_jobs_commits_fold_to_a_bit_a_page_and_still_count_as_committed(ledger):
    """Once a job is sealed (finish), its commit records fold into one bitmap per bucket:
    2,000 committed pages drop from ~34 bytes of Redis each to under 2. A folded page
    still stands as committed to every script: starting it skips it, committing or
    failing it again is a duplicate, the window never claims it again after a retry
    reopens the job; a page committed after the retry is a record again (the next
    finalizer reads only it) and folds into the same bitmap at the next seal."""
    total = 2000
    _create(ledger, total=total, window=total)
    missing = {40, 1500}
    for first in range(1, total + 1, 32):
        pages = [p for p in range(first, min(first + 32, total + 1)) if p not in missing]
        ledger.start_pages(JOB, pages, "w1")
        assert ledger.commit_run(JOB, [_commit(p) for p in pages])[0] == "committed"
    redis = ledger.redis
    buckets = sorted(redis.smembers(ledger.key(JOB, "buckets")), key=int)
    keys = [ledger.key(JOB, f"c:{bucket}") for bucket in buckets]
    before = sum(redis.memory_usage(key) for key in keys)
    ledger.finish(JOB, generation=1, sealed=[1], state="failed")
    after = sum(redis.memory_usage(key) for key in keys)
    committed = total - len(missing)
    print(f"\ncommit buckets: {before / committed:.1f} -> {after / committed:.2f} B a page")
    assert before / committed > 20 and after / committed < 2
    assert list(ledger.commits(JOB)) == []
    assert ledger.committed_pages(JOB) == set(range(1, total + 1)) - missing
    assert ledger.is_committed(JOB, 1) and not ledger.is_committed(JOB, 40)

    assert ledger.reopen(JOB, open_ended=False) == "running"
    ledger.redis.hdel(ledger.key(JOB, "failed"), *missing)  # as retry does: only these run
    starts = ledger.start_pages(JOB, [39, 40, 41], "w2")
    assert [starts[p].run for p in (39, 40, 41)] == [False, True, False]
    assert starts[39].reason == "committed"
    assert ledger.commit(JOB, _commit(41, segment=2)) == ("duplicate", [])
    assert ledger.fail(JOB, 42, {"page": 42, "attempts": 1})[0] == "duplicate"
    outcome, _, pages = ledger.commit_run(JOB, [_commit(39, 2), _commit(40, 2)])
    assert pages == {39: "duplicate", 40: "committed"}
    assert [c.page for c in ledger.commits(JOB)] == [40]
    ledger.finish(JOB, generation=2, sealed=[2], state="failed")
    assert ledger.committed_pages(JOB) == set(range(1, total + 1)) - {1500}
    assert list(ledger.commits(JOB)) == []


def test_the_states_of_many_jobs_are_read_in_one_round_trip(ledger):
    """``states`` reads every listed job's state in one pipeline, each equal to what
    ``state`` reads for it alone, in the order asked; a job that is gone (expired or
    forgotten since it was listed) is left out instead of failing the list."""
    _create(ledger, total=100, window=16)
    ledger.start_pages(JOB, [1, 2], "w1")
    ledger.commit_run(JOB, [_commit(1), _commit(2)])
    before = _commands(ledger)
    states = ledger.states([JOB, "gone", JOB])
    # HGETALL and ZCARD per job, nothing more (the INFO that took `before` counts too)
    assert _commands(ledger) - before == 6 + 1
    assert states == [ledger.state(JOB), ledger.state(JOB)]
    assert states[0].committed == 2 and states[0].in_flight == 16  # the window refilled
    assert ledger.states([]) == []


def test_a_finalizer_killed_while_folding_leaves_a_final_job_that_still_expires(
        ledger, monkeypatch):
    """The job goes final and every one of its keys is set to expire in one transaction,
    before its commit records are folded: a finalizer that dies while folding leaves
    nothing kept for ever. A fold that does run keeps each bucket's time to live."""
    _create(ledger, total=300, window=300)
    ledger.start_pages(JOB, list(range(1, 301)), "w1")
    ledger.commit_run(JOB, [_commit(p) for p in range(1, 301)])
    redis = ledger.redis
    buckets = [ledger.key(JOB, f"c:{b}") for b in redis.smembers(ledger.key(JOB, "buckets"))]

    def killed(job_id: str, buckets: set[str] | None = None) -> None:
        raise SystemExit("killed while folding")

    monkeypatch.setattr(ledger, "_fold_commits", killed)
    with pytest.raises(SystemExit):
        ledger.finish(JOB, generation=1, sealed=[1], state="done")
    assert ledger.state(JOB).state == "done"
    keys = [key for key in redis.scan_iter(f"{ledger.prefix(JOB)}:*")]
    assert len(keys) >= len(buckets) + 3 and all(redis.ttl(key) > 0 for key in keys), \
        [key for key in keys if redis.ttl(key) <= 0]

    monkeypatch.undo()
    redis.expire(buckets[0], 1000)  # a time left that the fold must not reset
    ledger._fold_commits(JOB)
    assert all(redis.hkeys(key) == ["done"] for key in buckets)
    assert 990 < redis.ttl(buckets[0]) <= 1000
    assert all(redis.ttl(key) > 1000 for key in buckets[1:])
