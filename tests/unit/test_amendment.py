"""What `harvest retry JOB_ID --job FIXED.toml` may change (pure, no I/O)."""

from __future__ import annotations

import pytest

from harvester.core.amendment import amend
from harvester.errors import JobSpecError
from harvester.core.job import parse_job

STORED_DIR = "/data/out"


def job(**changes) -> dict:
    doc = {
        "job": {"name": "shop", "url": "https://api.example.com/items",
                "params": {"per_page": 50}, "headers": {"Authorization": "Bearer ${OLD}"}},
        "pagination": {"style": "page", "pages": 10},
        "http": {"timeout_read": 5.0, "retries": 2},
        "output": {"dir": STORED_DIR},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        doc[section][key] = value
    return doc


def spec(**changes):
    return parse_job(job(**changes))


def test_headers_http_limits_and_compression_are_taken_from_the_fixed_file():
    """A new token, longer timeouts, more retries, a rate limit and another compression
    level are what a retry is for: the amended spec carries them, the rest stays."""
    fixed = parse_job({**job(job__headers={"Authorization": "Bearer ${NEW}"},
                             http__timeout_read=60.0, http__retries=9),
                       "limits": {"rate_per_second": 3.0}})
    fixed_doc = job(job__name="renamed")
    fixed_doc["output"]["compress_level"] = 1
    amended = amend(spec(), fixed, job_id="shop-1")
    assert amended.headers == {"Authorization": "Bearer ${NEW}"}
    assert amended.http.timeout_read == 60.0 and amended.http.retries == 9
    assert amended.limits.rate_per_second == 3.0
    assert amended.url == spec().url and amended.params == {"per_page": 50}
    assert amend(spec(), parse_job(fixed_doc), job_id="shop-1").output.compress_level == 1
    assert amend(spec(), parse_job(fixed_doc), job_id="shop-1").name == "shop", \
        "the job keeps its name"


@pytest.mark.parametrize("changes, key", [
    ({"job__url": "https://api.example.com/other"}, "job.url"),
    ({"job__params": {"per_page": 100}}, "job.params"),
    ({"job__method": "POST"}, "job.method"),
    ({"pagination__pages": 20}, "pagination.pages"),
    ({"pagination__param": "p"}, "pagination.param"),
    ({"output__dir": "/data/elsewhere"}, "output.dir"),
    ({"output__mode": "records", "output__records_path": "items"}, "output.mode"),
])
def test_a_change_to_what_a_page_requests_or_where_it_goes_is_refused_naming_the_key(
        changes, key):
    """Page N of a retry must be the same request into the same output as before:
    changing the URL, params, method, pagination or output fails with the dotted key."""
    with pytest.raises(JobSpecError) as caught:
        amend(spec(), spec(**changes), job_id="shop-1", path="fixed.toml")
    assert caught.value.key == key
    assert "fixed.toml" in str(caught.value) and "shop-1" in str(caught.value)


def test_a_relative_output_dir_naming_the_same_directory_is_the_same(tmp_path, monkeypatch):
    """The stored dir is absolute (resolved at submit); the fixed file may say it
    relative to where the command runs, as the original did."""
    monkeypatch.chdir(tmp_path)
    stored = parse_job(job(output__dir=str(tmp_path / "out")))
    assert amend(stored, parse_job(job(output__dir="out")), job_id="j").output.dir == \
        str(tmp_path / "out")
