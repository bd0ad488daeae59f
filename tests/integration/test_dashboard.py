"""The dashboard at / in a real headless browser (Debian's chromium, driven by
selenium through chromium-driver) against `harvest serve`, real workers and the demo
API: a running job's progress moves, its failed pages show with their reasons, and
the retry button runs them again. Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import shutil
import time
from urllib.parse import quote

import pytest
from support.services import REPO_ROOT, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = REPO_ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (scripts/test installs them as root)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_dashboard_shows_progress_and_failures_and_retries_them(browser, service, api,
                                                                 tmp_path):
    """The job list shows a running job; its page shows the page count rising while it
    runs, then state 'failed' with pages 4 and 9 and their 500s; once the API recovers,
    the retry button queues exactly those two and the page ends on 'done'."""
    from selenium.webdriver.common.by import By

    api.set_faults([{"kind": "status", "status": 500, "paths": ["/items"], "pages": [4, 9]},
                    {"kind": "slow", "paths": ["/items"], "delay": 0.05, "piece_bytes": 64}])
    created = service.post("/jobs", json={
        "job": {"name": "dash", "url": f"{api.url}/items", "params": {"per_page": 4}},
        "pagination": {"style": "page", "pages": 120},
        "http": {"retries": 1, "backoff_factor": 0.05, "backoff_max": 0.1},
        "output": {"dir": str(tmp_path / "out")}})
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]

    def text(test_id: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f'[data-testid="{test_id}"]').text

    def failure_rows() -> list[tuple[str | None, str]]:
        """(page, text) of each listed failure, in one reading: the table is drawn again
        on each stream event, which leaves rows found before it stale."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(50):
            try:
                return [(row.get_attribute("data-page"), row.text) for row in
                        browser.find_elements(By.CSS_SELECTOR, '[data-testid="failures"] tr')]
            except StaleElementReferenceException:
                time.sleep(0.1)
        raise AssertionError("the failures table never held still for 5 s")

    def committed() -> int:
        shown = text("pages").split("/")[0].replace(",", "").strip()
        return int(shown) if shown.isdigit() else -1

    browser.get(f"{service.url}/?token={quote(service.token, safe='')}")  # becomes a cookie
    assert "token=" not in browser.current_url
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]'),
             timeout=20, what="the job in the dashboard's list")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"]').click()
    wait_for(lambda: text("state") == "running" and committed() > 0, timeout=30,
             what="a running job with pages done")
    first = committed()
    wait_for(lambda: committed() > first, timeout=30, what="the page count to move")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "dashboard-running.png"))

    wait_for(lambda: text("state") == "failed", timeout=120, what="the job to end failed")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR,
                                               '[data-testid="failures"] tr')) == 2,
             timeout=20, what="the two failed pages listed")
    rows = failure_rows()
    assert [page for page, _ in rows] == ["4", "9"]
    assert all("500" in row_text for _, row_text in rows)
    assert text("failed") == "2"
    browser.save_screenshot(str(ARTIFACTS / "dashboard-failed.png"))

    api.clear_faults()
    retry = browser.find_element(By.CSS_SELECTOR, '[data-testid="retry"]')
    assert retry.is_enabled()
    retry.click()
    wait_for(lambda: "2 page(s) queued" in text("retry-note"), timeout=20,
             what="the retry to be accepted")
    wait_for(lambda: text("state") == "done", timeout=60, what="the job to end done")
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR,
                                               '[data-testid="failures"] tr'),
             timeout=20, what="the failures list to empty")
    assert text("pages").startswith("120 / 120")
    browser.save_screenshot(str(ARTIFACTS / "dashboard-done.png"))
