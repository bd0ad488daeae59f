"""A hostile API: every body fault on a share of pages. The output stays exact:
every page once, complete, nothing from a faulty response; pages that never
succeed are failed with their reason."""

from __future__ import annotations

from support.output import assert_exactly_once, failed_lines

from support.jobs import job_toml

# fault -> pages it hits twice (then the page is served normally)
TRANSIENT = {
    "reset": [3, 23], "short": [4, 24], "eof_no_length": [5, 25], "gzip_truncated": [6, 26],
    "invalid_json": [7, 27], "html": [8, 28], "stall": [9, 29], "slow": [10, 30],
}
STATUS = {500: [11, 31], 502: [12], 503: [13], 504: [14], 429: [15]}
# fault -> page it hits on every attempt, and the error class recorded for it
PERMANENT = {"reset": (41, "TruncatedBody"), "invalid_json": (42, "InvalidJSON"),
             "html": (43, "InvalidJSON"), "stall": (44, "DeadlineExceeded"),
             "short": (45, "TruncatedBody"), "gzip_truncated": (46, "InvalidJSON")}
PAGES = 60


def _rules() -> list[dict]:
    rules = []
    for kind, pages in TRANSIENT.items():
        rule = {"kind": kind, "paths": ["/items"], "pages": pages, "times": 2}
        if kind == "stall":
            rule["seconds"] = 6  # longer than timeout_read = 3
        if kind == "slow":
            rule.update(piece_bytes=16, delay=0.5)  # a drip past page_deadline = 4
        rules.append(rule)
    for status, pages in STATUS.items():
        rule = {"kind": "status", "status": status, "paths": ["/items"], "pages": pages,
                "times": 2}
        if status == 429:
            rule["retry_after"] = "1"
        rules.append(rule)
    for kind, (page, _) in PERMANENT.items():
        rule = {"kind": kind, "paths": ["/items"], "pages": [page]}
        if kind == "stall":
            rule["seconds"] = 6
        rules.append(rule)
    return rules


def test_hostile_api_output_is_exact(api, workers, redis_server, harvest, tmp_path):
    """Resets, short bodies, bodies ending early, truncated gzip, invalid JSON, HTML with 200,
    stalls, slow drips and 5xx/429 on a share of pages: those that recover are committed
    exactly once with the right body; those that never do are listed with their reason."""
    workers.threads = 8
    workers.start()
    api.set_faults(_rules())
    job = job_toml(tmp_path / "job.toml", url=f"{api.url}/items",
                   params={"per_page": 5, "pages": PAGES},
                   pagination=f'style = "page"\npages = {PAGES}',
                   http="timeout_connect = 2\ntimeout_read = 3\npage_deadline = 4\nretries = 3"
                        "\nbackoff_factor = 0.05\nbackoff_max = 0.2")
    result = harvest("run", str(job), redis_url=redis_server.url, timeout=400)
    assert result.returncode == 1, result.stderr
    out = tmp_path / "out"
    failed = {f["page"]: f for f in failed_lines(out)}
    assert {page: f["error_class"] for page, f in failed.items()} == \
        {page: reason for page, reason in PERMANENT.values()}
    assert all(f["attempts"] >= 4 and f["message"] for f in failed.values())
    good = [p for p in range(1, PAGES + 1) if p not in failed]
    assert_exactly_once(out, good)
    incomplete = harvest("verify", str(out))
    assert incomplete.returncode == 1, "intact but incomplete: exit 1 naming the counts"
    assert f"{len(failed)} failed, 0 pending" in incomplete.stderr
    served = api.stats()["by_page"]
    for pages in [*TRANSIENT.values(), *STATUS.values()]:
        for page in pages:
            assert served[f"/items:{page}"] == 3, f"page {page}: two faults, then served"
