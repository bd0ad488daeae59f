"""The values the ledger stores per committed page (harvester.core.layout), read back
without Redis."""

from __future__ import annotations

from harvester.core.layout import Commit, decode_pages, folded_pages


def test_claimed_pages_decode_from_ranges_in_their_order():
    """Ranges and single pages, in the order the commit claimed them; nothing is none."""
    assert decode_pages("40,50,65-68,7") == [40, 50, 65, 66, 67, 68, 7]
    assert decode_pages("") == []
    assert decode_pages("100000000-100000001") == [100_000_000, 100_000_001]


def test_a_commit_reads_its_location_whatever_it_claimed():
    """The location before the '|' is the commit; the claims after it are not."""
    commit = Commit.decode(32, "15:8144:260:312:1|1249-1280")
    assert commit == Commit(32, 15, 8144, 260, 312, 1)
    assert Commit.decode(32, commit.encode()) == commit


def test_a_folded_bucket_names_its_pages_by_bit():
    """A sealed bucket's bitmap (lua/compact.lua): byte k holds pages 8k..8k+7 of the
    bucket, lowest bit first; bucket 3 starts at page 384; no bitmap, no pages."""
    bitmap = "01" + "00" * 6 + "80" + "00" * 8
    assert folded_pages(0, bitmap) == {0, 63}
    assert folded_pages(3, "ff" + "00" * 15) == set(range(384, 392))
    assert folded_pages(3, "00" * 15 + "80") == {511}
    assert folded_pages(5, None) == set() and folded_pages(5, "") == set()
