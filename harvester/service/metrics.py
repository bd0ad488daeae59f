"""Prometheus metrics per job, read from the ledger at each scrape.

A custom collector (not counters kept in this process): every number comes from
Redis, so any replica of ``harvest serve`` reports the same values, and a
restart loses nothing. A scrape reads the most recent jobs (``limit``), a few
commands each.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..client import Harvester

STATES = ("running", "finalizing", "done", "failed", "cancelled")


class JobCollector(Collector):
    def __init__(self, harvester: Harvester, *, limit: int = 100):
        self.harvester = harvester
        self.limit = limit

    def collect(self) -> Iterator[Metric]:
        labels = ["job_id"]
        committed = CounterMetricFamily("harvest_pages_committed", "Pages committed",
                                        labels=labels)
        failed = CounterMetricFamily("harvest_pages_failed", "Pages failed for good",
                                     labels=labels)
        total = GaugeMetricFamily("harvest_pages", "Pages the job has (so far)", labels=labels)
        raw = CounterMetricFamily("harvest_raw_bytes", "Decoded bytes committed", labels=labels)
        gz = CounterMetricFamily("harvest_compressed_bytes", "Compressed bytes committed",
                                 labels=labels)
        requests = CounterMetricFamily("harvest_requests", "HTTP requests sent for resolved"
                                       " pages", labels=labels)
        retries = CounterMetricFamily("harvest_retries", "Requests beyond one per resolved"
                                      " page (retries and redirects)", labels=labels)
        in_flight = GaugeMetricFamily("harvest_pages_in_flight", "Pages queued or running",
                                      labels=labels)
        paused = GaugeMetricFamily("harvest_paused", "1 while a Retry-After pause holds the"
                                   " job", labels=labels)
        state = GaugeMetricFamily("harvest_job_state", "1 for the job's current state",
                                  labels=["job_id", "state"])
        for status in self.harvester.jobs(self.limit):
            key = [status.job_id]
            committed.add_metric(key, status.committed)
            failed.add_metric(key, status.failed)
            total.add_metric(key, status.total)
            raw.add_metric(key, status.raw_bytes)
            gz.add_metric(key, status.compressed_bytes)
            requests.add_metric(key, status.requests)
            retries.add_metric(key, status.retries)
            in_flight.add_metric(key, status.in_flight)
            paused.add_metric(key, 1 if status.paused else 0)
            for name in STATES:
                state.add_metric([status.job_id, name], 1 if status.state == name else 0)
        yield from (committed, failed, total, raw, gz, requests, retries, in_flight, paused,
                    state)
