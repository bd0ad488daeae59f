"""What the finalizer reads from the ledger and records in it: the commits in page
order, the segments, the failures, the claim on page 0 (the finalizer's lease), and
the job made final (its commit records folded, its keys set to expire).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..core.layout import FOLDED, Commit, folded_pages
from ..core.secrets import scrub
from .connection import LedgerConnection, now_ms

COMMIT_READ_BATCH = 64  # commit buckets read per round trip
FINALIZER_PAGE = 0  # the lease of page 0 is the finalizer's
FOLD_BATCH = 256  # buckets folded per script call (~32,000 pages: a few ms of Redis)
# Every per-job key but the c:<n> commit buckets (listed in 'buckets').
JOB_KEYS = ("job", "lease", "todo", "tries", "links", "owner", "failed", "claims", "buckets",
            "segs", "sealed", "seen", "bucket", "inflight")


class SealRecords(LedgerConnection):
    def commits(self, job_id: str) -> Iterator[Commit]:
        """Every committed page, in page order: one read per bucket that holds a commit,
        whatever total the API announced."""
        buckets = sorted(int(b) for b in self._buckets(job_id))
        for first in range(0, len(buckets), COMMIT_READ_BATCH):
            batch = buckets[first:first + COMMIT_READ_BATCH]
            read = self._pipeline(lambda pipe: [pipe.hgetall(f"{self.prefix(job_id)}:c:{b}")
                                                for b in batch], transaction=False)
            for entries in read:
                entries.pop(FOLDED, None)  # sealed by an earlier generation
                for page in sorted(entries, key=int):
                    yield Commit.decode(int(page), entries[page])

    def committed_pages(self, job_id: str) -> set[int]:
        """Every committed page, sealed or not (for tests and tools: reads every bucket)."""
        pages: set[int] = set()
        for bucket in self._buckets(job_id):
            entries = self._call(self.redis.hgetall, f"{self.prefix(job_id)}:c:{bucket}")
            pages |= folded_pages(int(bucket), entries.pop(FOLDED, None))
            pages |= {int(page) for page in entries}
        return pages

    def segments(self, job_id: str) -> dict[int, str]:
        return {int(k): v for k, v in self._call(self.redis.hgetall,
                                                 self.key(job_id, "segs")).items()}

    def sealed_segments(self, job_id: str) -> set[int]:
        return {int(s) for s in self._call(self.redis.smembers, self.key(job_id, "sealed"))}

    def failures(self, job_id: str) -> dict[int, dict[str, Any]]:
        entries = self._call(self.redis.hgetall, self.key(job_id, "failed"))
        return {int(page): json.loads(record) for page, record in entries.items()}

    def failure_sample(self, job_id: str, count: int = 200) -> dict[int, dict[str, Any]]:
        """Some failure records (one HSCAN step, about ``count``): enough to say why
        pages failed, at a bounded cost whatever the number of failures."""
        _, entries = self._call(self.redis.hscan, self.key(job_id, "failed"), 0, count=count)
        return {int(page): json.loads(record) for page, record in entries.items()}

    def begin_finalize(self, job_id: str, worker: str) -> bool:
        """Claim the finalizer; False while another live finalizer holds it."""
        return self.run_script(
            "begin_finalize", [self.key(job_id, n) for n in ("job", "lease", "owner")],
            [worker, now_ms() + self.lease_ms, now_ms()]) == 1

    def finalize_if_complete(self, job_id: str) -> bool:
        """Hand a reopened job with nothing left to fetch straight to the finalizer."""
        return self.run_script("finish_if_complete", [self.key(job_id, "job"),
                                                self.key(job_id, "lease")],
                         [now_ms() + self.lease_ms]) == 1

    def record_finalizer_error(self, job_id: str, message: str) -> int:
        return int(self._pipeline(lambda pipe: (
            pipe.hset(self.key(job_id, "job"), "finalize_error", scrub(message)[:1000]),
            pipe.hincrby(self.key(job_id, "job"), "finalize_failures", 1)))[1])

    def finish(self, job_id: str, *, generation: int, sealed: list[int], state: str) -> None:
        """Record a finished finalization: segments sealed, job final and set to expire,
        in one transaction; then fold its commit records. A finalizer that dies while
        folding leaves a final job whose keys still expire, some buckets unfolded."""
        buckets = self._buckets(job_id)  # read once: at 10^8 pages, ~780,000 of them
        expiring = self._job_keys(job_id, buckets) if self.keep_seconds > 0 else []

        def build(pipe: Any) -> None:
            if sealed:
                pipe.sadd(self.key(job_id, "sealed"), *sealed)
            pipe.hset(self.key(job_id, "job"), mapping={"state": state, "sealed_gen": generation})
            pipe.hdel(self.key(job_id, "job"), "finalize_error", "finalize_failures")
            pipe.delete(self.key(job_id, "lease"), self.key(job_id, "claims"),
                        self.key(job_id, "owner"))
            pipe.srem("hv:active", job_id)
            for key in expiring:
                pipe.expire(key, self.keep_seconds)

        self._pipeline(build)
        self._fold_commits(job_id, buckets)

    def _fold_commits(self, job_id: str, buckets: set[str] | None = None) -> None:
        """Every commit is sealed: fold each bucket's records into its bitmap of committed
        pages (lua/compact.lua), ~34 bytes a page down to ~2 for the days the job is kept."""
        ordered = sorted(self._buckets(job_id) if buckets is None else buckets, key=int)
        for first in range(0, len(ordered), FOLD_BATCH):
            self.run_script("compact", [],
                            [self.prefix(job_id), *ordered[first:first + FOLD_BATCH]])

    def _buckets(self, job_id: str) -> set[str]:
        """The numbers of the job's commit buckets (its c:<n> hashes)."""
        return self._call(self.redis.smembers, self.key(job_id, "buckets"))

    def _job_keys(self, job_id: str, buckets: set[str] | None = None) -> list[str]:
        return [self.key(job_id, name) for name in JOB_KEYS] + [
            f"{self.prefix(job_id)}:c:{bucket}"
            for bucket in (self._buckets(job_id) if buckets is None else buckets)]
