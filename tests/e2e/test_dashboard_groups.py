"""The dashboard's group pages in headless Chromium: one row per member, filterable by status
and entity, against a coordinator over HTTP whose workers the test plays; and its schedules
page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from cli.stack import free_port
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.groups import MemberRequest
from coordinator.schedules import Schedule
from coordinator.service import Coordinator, GroupRequest, TriggerPolicy
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.groups import GroupRule
from shared.messages import STAGES, StageFailed, StageSucceeded, encode
from shared.recipe_registry import get_recipe
from shared.topology import EVENTS_TOPIC, build_topology
from tests.e2e.test_dashboard import _serve, browser, screenshot, text, wait_for

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_dashboard

pytestmark = pytest.mark.slow

ACTION_WAIT_S = float(os.environ.get("RETRAINER_TEST_BROWSER_WAIT_S", "90"))
SPECIES = ("cygnus-buccinator", "cygnus-olor", "anser-anser", "anas-crecca")

SCHEDULES = (
    Schedule(cron="0 3 * * *", recipe="state_identifier", data="datasets/birds/anas-crecca"),
    Schedule(
        cron="30 6 * * 1",
        recipe="state_identifier",
        data="datasets/birds",
        group=GroupRule(),
        timezone="Europe/Amsterdam",
    ),
)

SCHEDULES_JS = """
return Array.from(document.querySelectorAll("#schedules tbody tr")).map((row) =>
  Array.from(row.cells).map((cell) => [cell.innerText, cell.title]));
"""

MEMBERS_JS = """
return Array.from(document.querySelectorAll("#members tbody tr")).map(
  (row) => [row.dataset.entity, row.dataset.status, row.querySelector(".model").innerText]);
"""


@dataclass
class Deployment:
    url: str
    group_id: UUID


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("dashboard-groups")
    blobs = LocalBlobStore(root / "blobs")
    for species in SPECIES:
        blobs.upload_blob(f"datasets/birds/{species}/part-1.csv", b"timestamp,a\n1,2\n")
    store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(root / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        triggers=TriggerPolicy(schedules=SCHEDULES),
    )
    view = coordinator.start_group(
        GroupRequest(
            recipe="state_identifier",
            members=[MemberRequest(s, f"datasets/birds/{s}") for s in SPECIES],
            concurrency=2,
        )
    )
    runs = {entity: run.id for _, entity, run in view.members}
    bus = SqliteMessageBus(root / "bus.sqlite", topology=build_topology())

    def send(event: StageSucceeded | StageFailed) -> None:
        bus.send_messages(EVENTS_TOPIC, [encode(event)])
        while coordinator.consume_events(max_wait_s=0.05):
            pass

    swan = runs["cygnus-buccinator"]
    stage_details: dict[str, dict[str, Any]] = {
        "register": {"model_name": "state_identifier.cygnus-buccinator", "model_version": "1"},
        "tag": {"promoted": True, "reason": "first"},
    }
    for stage in STAGES:
        details = stage_details.get(stage, {})
        send(StageSucceeded(correlation_id=swan, stage=stage, attempt=1, details=details))
    send(
        StageFailed(
            correlation_id=runs["cygnus-olor"],
            stage="aggregation",
            attempt=1,
            error="part-1.csv, row 2: 'x' is not a number",
            error_type="DataValidationError",
            retryable=False,
        )
    )
    coordinator.admission_tick()
    port = free_port()
    server, thread = _serve(create_app(coordinator=coordinator, run_loops=False), port)
    try:
        yield Deployment(f"http://127.0.0.1:{port}", view.group.id)
    finally:
        server.should_exit = True
        thread.join(10)
        coordinator.close()
        bus.close()


def test_the_group_page_has_a_row_per_member_and_filters_them(
    deployment: Deployment, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = httpx.get(f"{deployment.url}/dashboard/groups/{deployment.group_id}")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]

    browser.get(f"{deployment.url}/dashboard/groups/{deployment.group_id}")
    wait_for(browser, lambda d: len(d.execute_script(MEMBERS_JS)) == 4, "no member rows")
    members = browser.execute_script(MEMBERS_JS)
    assert [(entity, status) for entity, status, _ in members] == [
        ("cygnus-buccinator", "succeeded"),
        ("cygnus-olor", "failed"),
        ("anser-anser", "queued"),
        ("anas-crecca", "queued"),
    ]
    assert members[0][2] == "state_identifier.cygnus-buccinator v1 ★ promoted"
    assert "1 succeeded" in text(browser, "#group-counts")
    screenshot(browser, tmp_path, "dashboard-group.png")

    Select(browser.find_element(By.ID, "status-filter")).select_by_value("queued")
    wait_for(browser, lambda d: len(d.execute_script(MEMBERS_JS)) == 2, "status filter")
    browser.find_element(By.ID, "entity-filter").send_keys("crecca")
    wait_for(browser, lambda d: len(d.execute_script(MEMBERS_JS)) == 1, "entity filter")
    assert browser.current_url.endswith("?status=queued&entity=crecca")
    assert text(browser, "#count") == "1 of 4 members"

    browser.get(f"{deployment.url}/dashboard/groups")
    wait_for(
        browser,
        lambda d: (
            d.execute_script("return document.querySelectorAll('#groups tbody tr').length") == 1
        ),
        "the groups list never showed the group",
    )
    assert "4: 2 queued · 1 succeeded · 1 failed" in text(browser, "#groups tbody")


def test_the_group_page_retries_failed_members_and_cancels_the_group(
    deployment: Deployment, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import alert_is_present
    from selenium.webdriver.support.ui import WebDriverWait

    def until(condition: Any, message: str) -> Any:
        # Generous: each step is an API call and a refresh on a machine that may be busy.
        return WebDriverWait(browser, ACTION_WAIT_S, poll_frequency=0.1).until(condition, message)

    def statuses(d: Any) -> dict[str, str]:
        return {entity: status for entity, status, _ in d.execute_script(MEMBERS_JS)}

    browser.get(f"{deployment.url}/dashboard/groups/{deployment.group_id}")
    until(lambda d: statuses(d).get("cygnus-olor") == "failed", "the failed member is not shown")
    retry = browser.find_element(By.ID, "retry-group")
    cancel = browser.find_element(By.ID, "cancel-group")
    assert retry.is_displayed() and retry.text == "Retry 1 failed/cancelled"
    assert cancel.is_displayed()

    retry.click()
    until(lambda d: (text(d, "#action-result") or "").startswith("Retried: "), "no retry result")
    until(lambda d: statuses(d)["cygnus-olor"] != "failed", "the failed member was not retried")
    until(lambda d: not d.find_element(By.ID, "retry-group").is_displayed(), "retry still shown")

    cancel.click()
    until(alert_is_present(), "no confirmation asked").accept()
    until(lambda d: text(d, "#action-result") == "Group cancelled.", "no cancel result")
    until(
        lambda d: d.execute_script("return document.body.dataset.groupStatus") == "cancelled",
        "the page did not show the group cancelled",
    )
    assert not browser.find_element(By.ID, "cancel-group").is_displayed()
    assert statuses(browser)["cygnus-buccinator"] == "succeeded"
    assert set(statuses(browser).values()) == {"succeeded", "cancelled"}
    assert browser.find_element(By.ID, "retry-group").text == "Retry 3 failed/cancelled"


def test_the_schedules_page_lists_each_schedule_with_its_next_tick(
    deployment: Deployment, browser: Any, tmp_path: Path
) -> None:
    page = httpx.get(f"{deployment.url}/dashboard/schedules")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["content-security-policy"]
    listed = httpx.get(f"{deployment.url}/schedules").json()["schedules"]

    browser.get(f"{deployment.url}/dashboard/schedules")
    wait_for(browser, lambda d: len(d.execute_script(SCHEDULES_JS)) == 2, "no schedule rows")
    rows = browser.execute_script(SCHEDULES_JS)
    assert [[text for text, _ in row[:3]] for row in rows] == [
        ["0 3 * * *", "UTC", "state_identifier on datasets/birds/anas-crecca"],
        ["30 6 * * 1", "Europe/Amsterdam", "a group of state_identifier on datasets/birds"],
    ]
    # The next tick in the browser's time, the API's UTC time on hover; none acted on yet.
    assert [row[3][1] for row in rows] == [s["next_tick"] for s in listed]
    assert all(row[3][0][:4].isdigit() for row in rows)
    assert [row[4][0] for row in rows] == ["—", "—"]
    assert text(browser, "#count") == "2 schedules"
    screenshot(browser, tmp_path, "dashboard-schedules.png")
