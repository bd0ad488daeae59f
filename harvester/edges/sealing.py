"""What the finalizer reads from the ledger and records in it: the commits in page
order, the segments, the failures, and the claim on page 0 (the finalizer's lease).
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


class SealRecords(LedgerConnection):
    def commits(self, job_id: str) -> Iterator[Commit]:
        """Every committed page, in page order: one read per bucket that holds a commit,
        whatever total the API announced."""
        buckets = sorted(int(b) for b in self._call(self.redis.smembers,
                                                    self.key(job_id, "buckets")))
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
        buckets = self._call(self.redis.smembers, self.key(job_id, "buckets"))
        for bucket in buckets:
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
