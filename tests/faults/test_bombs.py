"""Bombs (issue 8, item 13) against real Redis, real worker processes and a raw-socket API.

A compressed body that inflates past ``http.max_page_bytes``, a JSON key of hundreds
of megabytes, and an array of fifty million one-digit records: each ends (failed with
its reason, or committed whole) while no worker process goes above 100 MB RSS.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pytest

from support.hostile import HostileServer, streamed
from support.jobs import job_toml
from support.output import failed_lines, manifest
from support.services import Workers, private_cluster, tree_rss

HTTP = "timeout_connect = 2\ntimeout_read = 10\npage_deadline = 120\nretries = 2\n" \
       "backoff_factor = 0.05\nbackoff_max = 0.1"
MIB = 1 << 20
RSS_CAP = 100 * MIB


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Redis and one worker process of two threads (its RSS is what is measured)."""
    with private_cluster(tmp_path_factory.mktemp("bombs"), count=1, threads=2) as pair:
        yield pair


class PeakRSS:
    """Samples the RSS of every worker process (and its children) while a job runs."""

    def __init__(self, workers: Workers):
        self.pids = [p.pid for p in workers.processes]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                self.peak = max([self.peak, *tree_rss(pid).values()])
            time.sleep(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _job(path: Path, url: str, *, extra: str = "", http: str = HTTP) -> Path:
    return job_toml(path, url=url, params={}, pagination='style = "page"\npages = 1',
                    http=http, extra=extra, name="bombs")


def _gzip_members(head: bytes, block: bytes, times: int, tail: bytes) -> bytes:
    """A multi-member gzip body that inflates to head + block * times + tail: the block is
    compressed once, so a gigabyte costs the test a few megabytes and milliseconds."""
    member = gzip.compress(block, compresslevel=9)
    return gzip.compress(head) + member * times + gzip.compress(tail)


def test_a_compression_bomb_fails_at_max_page_bytes(cluster, harvest, tmp_path):
    """A 2 MB gzip body that inflates to 1 GiB, with max_page_bytes = 64 MiB: page 1 fails
    as PageTooLarge naming max_page_bytes, after one request (not retried), no record of it
    is in the shards, and the worker stays under 100 MB RSS."""
    server, workers = cluster
    block = b"0," * (MIB // 2)
    body = _gzip_members(b"[", block, 1024, b"0]")
    assert len(body) < 4 * MIB
    with HostileServer() as api:
        api.route("/bomb", lambda req: streamed(200, b"", body, 1, b"",
                                                headers={"Content-Encoding": "gzip"}))
        job = _job(tmp_path / "job.toml", f"{api.url}/bomb", http=HTTP + "\nmax_page_bytes = "
                   f"{64 * MIB}")
        with PeakRSS(workers) as rss:
            result = harvest("run", str(job), redis_url=server.url, timeout=240)
        requests = len(api.requests)
    assert result.returncode == 1, result.stderr
    [failure] = failed_lines(tmp_path / "out")
    assert failure["error_class"] == "PageTooLarge", failure
    assert "max_page_bytes = 67,108,864" in failure["message"]
    assert "gzip" in failure["message"], "the message names the encoding"
    assert requests == 1 and failure["attempts"] == 1, "a bomb is not fetched again"
    assert manifest(tmp_path / "out")["pages"]["ok"] == 0
    assert rss.peak < RSS_CAP, f"worker peak RSS {rss.peak // MIB} MB"


def test_the_default_cap_is_4_gib_and_0_means_none(tmp_path):
    """A job without max_page_bytes caps a page at 4 GiB of decoded bytes; 0 turns it off."""
    from harvester.core.job import load_job

    assert load_job(_job(tmp_path / "a.toml", "http://127.0.0.1:1/x")).http.max_page_bytes \
        == 4 << 30
    off = _job(tmp_path / "b.toml", "http://127.0.0.1:1/x", http=HTTP + "\nmax_page_bytes = 0")
    assert load_job(off).http.max_page_bytes == 0


def _harvest_a_huge_key(mode: str, cluster, harvest, tmp_path):
    """A job on an API whose one record holds a 256 MiB key: (result, requests, RSS)."""
    server, workers = cluster
    with HostileServer() as api:
        api.route("/key", lambda req: streamed(200, b'{"data": [{"', b"k" * MIB, 256,
                                               b'": 1}]}'))
        extra = 'mode = "records"\nrecords_path = "data"' if mode == "records" else ""
        job = _job(tmp_path / "job.toml", f"{api.url}/key", extra=extra)
        with PeakRSS(workers) as rss:
            result = harvest("run", str(job), redis_url=server.url, timeout=240)
        return result, len(api.requests), rss


@pytest.mark.parametrize("mode", ["records", "pages"])
def test_a_huge_key_is_harvested_in_constant_memory(mode, cluster, harvest, tmp_path):
    """A record holding one 256 MiB key, checked by the C validator (which holds no
    token): the page is committed whole after one request, in records mode (one line,
    the record) and pages mode alike, and the worker stays under 100 MB RSS."""
    from harvester.core.body import NATIVE

    if not NATIVE:
        pytest.skip("built without the C validator")
    result, requests, rss = _harvest_a_huge_key(mode, cluster, harvest, tmp_path)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert meta["pages"]["ok"] == 1 and meta["lines"] == 1
    assert meta["raw_bytes"] > 256 * MIB
    assert requests == 1
    assert rss.peak < RSS_CAP, f"worker peak RSS {rss.peak // MIB} MB"


@pytest.fixture(scope="module")
def ijson_cluster(tmp_path_factory):
    """A worker that validates with ijson, as an install without a C compiler does."""
    with private_cluster(tmp_path_factory.mktemp("ijson-cluster"), count=1, threads=2,
                         HARVEST_JSON_VALIDATOR="ijson") as pair:
        yield pair


@pytest.mark.parametrize("mode", ["records", "pages"])
def test_with_ijson_a_huge_key_fails_in_constant_memory(mode, ijson_cluster, harvest,
                                                        tmp_path):
    """The same 256 MiB key checked by ijson (no C validator): the page fails as
    PageTooLarge ("over 8 MiB") once the key passes 8 MiB, in records mode and pages
    mode alike, without retries, and the worker stays under 100 MB RSS (yajl would
    have held the key whole: 500 MB)."""
    result, requests, rss = _harvest_a_huge_key(mode, ijson_cluster, harvest, tmp_path)
    assert result.returncode == 1, result.stderr
    [failure] = failed_lines(tmp_path / "out")
    assert failure["error_class"] == "PageTooLarge" and "over 8 MiB" in failure["message"]
    assert requests == 1
    assert rss.peak < RSS_CAP, f"worker peak RSS {rss.peak // MIB} MB"


def test_fifty_million_tiny_records_are_harvested_in_constant_memory(cluster, harvest,
                                                                     tmp_path):
    """A top-level array of 50 Mi (52,428,800) one-digit records (100 MiB) in records mode is
    committed whole: that many lines, each the record, and the worker under 100 MB RSS.
    (Emitted a record at a time this took about 8 minutes; runs go out per chunk.)"""
    server, workers = cluster
    count = 50 * MIB  # records: "7," repeated, then a last "7"
    block = b"7," * MIB
    with HostileServer() as api:
        api.route("/tiny", lambda req: streamed(200, b"[", block, count // MIB - 1,
                                                b"7," * (MIB - 1) + b"7]"))
        job = _job(tmp_path / "job.toml", f"{api.url}/tiny",
                   extra='mode = "records"\nrecords_path = ""\ncompress_level = 1')
        with PeakRSS(workers) as rss:
            result = harvest("run", str(job), redis_url=server.url, timeout=400)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    assert manifest(out)["lines"] == count
    lines = 0
    for part in sorted(out.glob("part-*.jsonl.gz")):
        with gzip.open(part, "rb") as stream:
            while block := stream.read(8 * MIB):
                assert block.strip(b"7\n") == b"", "every line is the record 7"
                lines += block.count(b"\n")
    assert lines == count
    assert rss.peak < RSS_CAP, f"worker peak RSS {rss.peak // MIB} MB"
