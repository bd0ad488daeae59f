"""Bad input exits 2 with a message naming the file and the key, before anything is
enqueued; an unreachable API fails pages with a reason, never a traceback."""

from __future__ import annotations

import pytest

from support.output import failed_lines

from support.jobs import job_toml

GOOD = '''[job]
name = "ok"
url = "http://127.0.0.1:9/items"

[pagination]
style = "page"
pages = 3

[output]
dir = "out"
'''

CASES = {
    "missing key": (GOOD.replace('url = "http://127.0.0.1:9/items"\n', ""),
                    "job.url: is required"),
    "wrong type": (GOOD + '\n[http]\ntimeout_read = "5"\n',
                   "http.timeout_read: must be a number, not str"),
    "boolean for a number": (GOOD + "\n[http]\nretries = true\n",
                             "http.retries: must be an integer"),
    "unknown key": (GOOD.replace('name = "ok"', 'name = "ok"\ncolour = "red"'),
                    "job.colour: unknown key"),
    "unknown section": (GOOD + "\n[extras]\nx = 1\n", "extras: unknown section"),
    "bad URL": (GOOD.replace("http://127.0.0.1:9/items", "ftp://example.com/x"),
                "job.url: must be an absolute http(s) URL"),
    "URL without host": (GOOD.replace("http://127.0.0.1:9/items", "http:///items"),
                         "job.url: must be an absolute http(s) URL"),
    "cursor without cursor_path": (GOOD.replace('style = "page"\npages = 3', 'style = "cursor"'),
                                   "pagination.cursor_path: is required for style = 'cursor'"),
    "pages and total_pages_path": (GOOD.replace("pages = 3", 'pages = 3\ntotal_pages_path = "n"'),
                                   "pagination.total_pages_path: give one of"),
    "stop_on_empty without records_path": (
        GOOD.replace("pages = 3", "stop_on_empty = true"), "pagination.stop_on_empty"),
    "unknown style": (GOOD.replace('style = "page"', 'style = "scroll"'),
                      "pagination.style: must be one of"),
    "name with a slash": (GOOD.replace('name = "ok"', 'name = "a/b"'), "job.name: must match"),
    "name with dots": (GOOD.replace('name = "ok"', 'name = ".."'), "job.name: must match"),
    "negative timeout": (GOOD + "\n[http]\ntimeout_read = -1\n",
                         "http.timeout_read: must be greater than 0"),
    "zero rate": (GOOD + "\n[limits]\nrate_per_second = 0\n",
                  "limits.rate_per_second: must be greater than 0"),
    "records mode without records_path": (GOOD + 'mode = "records"\n', "output.records_path"),
    "output dir not writable": (GOOD.replace('dir = "out"', 'dir = "/proc/harvest/out"'),
                                "output.dir: output dir /proc/harvest/out is not writable"),
    "not TOML": ("[job\nname=", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_job_file_exits_2_naming_the_key(case, harvest, tmp_path):
    """Each malformed job file: exit 2, one message naming the file and the key, no
    traceback, and nothing enqueued (no broker is even needed: this one does not exist)."""
    text, expected = CASES[case]
    job = tmp_path / "bad.toml"
    job.write_text(text)
    result = harvest("run", str(job), redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert expected in result.stderr, result.stderr
    assert str(job) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_output_dir_of_another_job_exits_2(harvest, tmp_path):
    """A dir already claimed by another job is refused with exit 2, naming that job."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".harvest-job").write_text("other-20260101T000000-abcdef\n")
    job = tmp_path / "job.toml"
    job.write_text(GOOD)
    result = harvest("run", str(job), redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 2
    assert "in use by job other-20260101T000000-abcdef" in result.stderr


def test_usage_errors_exit_2(harvest):
    """A missing argument or an unknown command is a usage error: exit 2."""
    assert harvest("run").returncode == 2
    assert harvest("frobnicate").returncode == 2
    assert harvest("run", "a.toml", "--local", "--detach").returncode == 2


def test_no_broker_says_so_and_suggests_local(harvest, tmp_path):
    """With no Redis at HARVEST_REDIS_URL the error says so and suggests --local (exit 3)."""
    job = tmp_path / "job.toml"
    job.write_text(GOOD)
    result = harvest("run", str(job), redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 3
    assert "no Redis answers at redis://127.0.0.1:1/0" in result.stderr
    assert "--local" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:9/items", "cannot connect"),
    ("http://no-such-host.invalid/items", "cannot resolve the host name"),
])
def test_unreachable_api_fails_pages_with_the_reason(url, reason, workers, redis_server,
                                                     harvest, tmp_path):
    """A refused connection or a DNS failure fails each page with that reason (exit 1, the
    retry command given), never a traceback."""
    workers.start()
    job = job_toml(tmp_path / "job.toml", url=url, params={}, pagination='style = "page"\npages = 3',
                   http="timeout_connect = 2\nretries = 1\nbackoff_factor = 0.05\nbackoff_max = 0.1")
    result = harvest("run", str(job), redis_url=redis_server.url)
    assert result.returncode == 1, result.stderr
    assert "harvest retry" in result.stderr and "Traceback" not in result.stderr
    failed = failed_lines(tmp_path / "out")
    assert [f["page"] for f in failed] == [1, 2, 3]
    assert all(f["error_class"] == "TransportError" and reason in f["message"] for f in failed)
    assert "Traceback" not in workers.logs()
