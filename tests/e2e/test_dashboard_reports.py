"""A stage's report, linked from the run's dashboard page, opens sandboxed (headless Chromium).

Reuses the dashboard test's coordinator over HTTP and browser (a module of its own: its own
instance of that module-scoped deployment, so the other tests' run lists stay as they are).
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.messages import utcnow
from tests.e2e.test_dashboard import Deployment, browser, deployment, wait_for  # noqa: F401

pytestmark = pytest.mark.slow

REPORT = "validation/drift_report.html"
DATASET = "artifacts/cache/aggregation/5c1e0a"  # where the dashboard test's aggregation writes
HTML = (
    b"<!doctype html><title>Drift report</title><h1>Drift flagged (1)</h1>"
    b"<script>document.body.dataset.scripted = 'yes'</script>"
)


def test_a_drift_report_is_linked_from_the_run_page_and_opens_without_scripts(
    deployment: Deployment,  # noqa: F811
    browser: Any,  # noqa: F811
) -> None:
    from selenium.webdriver.common.by import By

    workers = deployment.workers
    workers.coordinator.blobs.upload_blob(f"{DATASET}/{REPORT}", HTML)
    run = workers.start("state_identifier", utcnow())
    workers.succeeded(run, "aggregation", utcnow(), 1.5, reports={"drift_report": REPORT})

    browser.get(f"{deployment.url}/dashboard/runs/{run}")
    link = wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-stage="aggregation"] a.report'),
        "no report link in the aggregation row",
    )[0]
    assert link.text == "drift report"
    href = link.get_attribute("href")
    assert href == f"{deployment.url}/runs/{run}/reports/aggregation/drift_report"

    browser.get(href)
    wait_for(browser, lambda d: "Drift flagged" in d.page_source, "the report did not open")
    scripted = browser.execute_script("return document.body.dataset.scripted || null;")
    assert scripted is None, "the report's script ran"
