"""Politeness measured at the API: limits hold for the job summed over 4 worker
processes, and a Retry-After slows the whole job."""

from __future__ import annotations

import pytest

from support.demo import start_demo_api
from support.jobs import job_toml, max_in_any_window


@pytest.fixture
def four_workers(workers):
    workers.count = 4
    workers.threads = 4
    return workers.start()


def test_rate_per_second_holds_across_four_workers(api, four_workers, redis_server, harvest,
                                                   tmp_path):
    """rate_per_second = 40 with 4 worker processes x 4 threads: never more than 44 requests
    in any one second at the API, and the job still runs near the rate."""
    job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                   params={"per_page": 2, "pages": 320},
                   pagination='style = "page"\npages = 320', limits="rate_per_second = 40")
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 0, result.stderr
    times = api.stats()["times"]
    assert len(times) == 320
    busiest = max_in_any_window(times)
    mean = len(times) / (max(times) - min(times))
    print(f"\nrate limit 40/s: busiest second {busiest}, mean {mean:.1f}/s")
    assert busiest <= 44, f"{busiest} requests in one second"
    assert mean >= 30, f"the limit should bind, not starve: mean {mean:.1f}/s"


def test_max_in_flight_holds_across_four_workers(four_workers, redis_server, harvest, tmp_path):
    """max_in_flight = 6 with slow responses and 16 worker threads: the API never sees more
    than 6 requests at once, and does see 6 (the limit binds)."""
    with start_demo_api(latency_ms=300) as slow:
        job = job_toml(tmp_path / "job.toml", url=f"{slow.url}/items",
                       params={"per_page": 2, "pages": 90},
                       pagination='style = "page"\npages = 90', limits="max_in_flight = 6")
        result = harvest("run", str(job), redis_url=redis_server.url)
        assert result.returncode == 0, result.stderr
        stats = slow.stats()
    print(f"\nmax_in_flight 6: the API saw at most {stats['max_in_flight']} at once")
    assert stats["requests"] == 90
    assert stats["max_in_flight"] <= 6
    assert stats["max_in_flight"] >= 5


def test_retry_after_slows_the_whole_job(api, four_workers, redis_server, harvest, tmp_path):
    """One 429 with Retry-After: 1 pauses every worker: over the next second the job's request
    rate falls below half its mean, and the page is then committed."""
    api.set_faults([{"kind": "status", "status": 429, "retry_after": "1", "paths": ["/items"],
                     "pages": [300], "times": 1}])
    job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                   params={"per_page": 2, "pages": 1500},
                   pagination='style = "page"\npages = 1500')
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 0, result.stderr
    stats = api.stats()
    times = sorted(stats["times"])
    (hit, *_), = [f for f in stats["faults"] if f[3] == "status"]
    mean = len(times) / (times[-1] - times[0])
    after = [t for t in times if hit < t <= hit + 1.0]
    print(f"\nRetry-After 1: {len(after)} requests in the next second, job mean {mean:.0f}/s")
    assert len(after) < mean / 2, f"{len(after)} requests in the second after the 429, mean {mean:.0f}/s"
    assert stats["by_page"]["/items:300"] == 2
