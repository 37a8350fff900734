"""The dashboard's actions and details (issue 10), in headless Chromium against a coordinator
over HTTP that wants an API token (as tests/e2e/test_dashboard.py; the test plays the workers):
cancel and retry from a run's page, links to the MLflow run and model version, a failed
attempt's log tail (redacted), the duration of a cancelled-then-retried run without the time
it spent cancelled, a loading state, and a load error shown once.

Every wait is on a DOM condition, with ``RETRAINER_TEST_BROWSER_WAIT_S`` (default 90 s) as the
limit: the polls these pages make take seconds on a machine at load 20.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from pydantic import SecretStr

from cli.stack import free_port
from coordinator.api import create_app
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from shared.errors import RetryableError
from shared.messages import utcnow
from shared.stage_logs import MAX_LOG_TAIL_CHARS, failure_log_blob
from tests.clock import Clock
from tests.e2e.test_dashboard import (
    StubChampions,
    Workers,
    _serve,
    browser,
    dashboard_coordinator,
    text,
)

pytestmark = pytest.mark.slow

__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_dashboard

TOKEN = "actions-token-" + "q" * 24
MLFLOW_UI = "http://mlflow.example.test:5000"
MLFLOW_RUN_ID = "4f1c2a9e0b7d4e55a3c6d8e9f0a1b2c3"
SECRET = "s3cr3t-SAS-signature-value"
WAIT_S = float(os.environ.get("RETRAINER_TEST_BROWSER_WAIT_S", "90"))


@dataclass
class Stack:
    url: str
    workers: Workers
    coordinator: Coordinator
    clock: Clock
    runs: dict[str, UUID]
    champions: StubChampions


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root: Path = tmp_path_factory.mktemp("dashboard-actions")
    coordinator, worker_bus, w, clock = dashboard_coordinator(root)
    s = timedelta(seconds=1)
    now = utcnow()
    runs: dict[str, UUID] = {}

    # A run cancelled 5 minutes in, left cancelled for 10, retried, and done 1 minute later:
    # 6 minutes of work (its record says 16 from start to end).
    start = now - 40 * 60 * s
    run = runs["resumed"] = w.start("state_identifier", start)
    t = w.succeeded(run, "aggregation", start, 60.0)
    t = w.succeeded(run, "split", t, 60.0)
    w.started(run, "train", t)
    clock.now = start + 5 * 60 * s
    coordinator.cancel_run(run)
    clock.now = start + 15 * 60 * s
    coordinator.retry_run(run)
    t = w.succeeded(run, "train", start + 15 * 60 * s, 20.0, attempt=2, metrics={"silhouette": 0.5})
    t = w.succeeded(run, "register", t, 20.0, model_name="state_identifier", model_version="1")
    w.succeeded(run, "tag", t, 20.0, model_name="state_identifier", promoted=True, reason="first")

    # Trained with its MLflow run recorded, registered as v2 and promoted.
    start = now - 20 * 60 * s
    run = runs["trained"] = w.start("state_identifier", start)
    t = w.succeeded(run, "aggregation", start, 1.0)
    t = w.succeeded(run, "split", t, 1.0)
    t = w.succeeded(run, "train", t, 5.0, metrics={"silhouette": 0.7}, mlflow_run_id=MLFLOW_RUN_ID)
    t = w.succeeded(run, "register", t, 1.0, model_name="state_identifier", model_version="2")
    w.succeeded(run, "tag", t, 1.0, model_name="state_identifier", promoted=True, reason="best")

    # Aggregation failed; its worker kept a long traceback that names a SAS signature.
    start = now - 10 * 60 * s
    run = runs["failed"] = w.start("state_identifier", start)
    w.failed(run, "aggregation", start, 2.0, "could not read part-1.csv: HTTP 403")
    traceback = "".join(f'  File "recipes/x.py", line {i}, in step_{i}\n' for i in range(2000))
    traceback += f"PermissionError: GET https://acct.blob.core.windows.net/d/p?sv=1&sig={SECRET}\n"
    coordinator.blobs.upload_blob(failure_log_blob(run, "aggregation", 1), traceback.encode())

    start = now - 5 * 60 * s
    run = runs["refused"] = w.start("state_identifier", start)
    w.failed(run, "aggregation", start, 2.0, "part-1.csv row 2: not a number")

    # In flight: train is running.
    start = now - 60 * s
    run = runs["running"] = w.start("state_identifier", start)
    t = w.succeeded(run, "aggregation", start, 1.0)
    t = w.succeeded(run, "split", t, 1.0)
    w.started(run, "train", t)
    clock.now = utcnow()

    settings = CoordinatorSettings(
        state_dir=root, api_token=SecretStr(TOKEN), mlflow_ui_url=MLFLOW_UI + "/"
    )
    champions = StubChampions({"state_identifier": "2"})
    port = free_port()
    app = create_app(settings, coordinator=coordinator, champions=champions, run_loops=False)
    server, thread = _serve(app, port)
    try:
        yield Stack(f"http://127.0.0.1:{port}", w, coordinator, clock, runs, champions)
    finally:
        server.should_exit = True
        thread.join(10)
        coordinator.close()
        worker_bus.close()


def wait_for(driver: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message)


def open_page(driver: Any, url: str) -> None:
    """``url`` with the API token (it moves into the tab's sessionStorage), loaded afresh
    (the same address but for its fragment would not reload the page)."""
    driver.get("about:blank")
    driver.get(f"{url}#token={TOKEN}")


def status_of(driver: Any) -> str | None:
    value: str | None = driver.execute_script("return document.body.dataset.runStatus || null")
    return value


def fact(driver: Any, name: str) -> str | None:
    return text(driver, f".fact-{name} dd")


def test_cancel_and_retry_from_the_run_page(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import alert_is_present

    run_id = stack.runs["running"]
    open_page(browser, f"{stack.url}/dashboard/runs/{run_id}")
    wait_for(browser, lambda d: status_of(d) == "running", "the running run did not load")
    cancel = browser.find_element(By.ID, "cancel-run")
    assert cancel.is_displayed() and cancel.is_enabled()
    assert not browser.find_element(By.ID, "retry-run").is_displayed()

    stack.clock.now = utcnow()
    cancel.click()
    wait_for(browser, alert_is_present(), "no confirmation asked").accept()
    wait_for(browser, lambda d: status_of(d) == "cancelled", "the run was not cancelled")
    wait_for(browser, lambda d: text(d, "#action-result") == "Run cancelled.", "no cancel result")
    assert stack.coordinator.get_run(run_id).status == "cancelled"
    retry = wait_for(
        browser,
        lambda d: (
            d.find_element(By.ID, "retry-run").is_displayed() and d.find_element(By.ID, "retry-run")
        ),
        "no retry button on the cancelled run",
    )
    assert not browser.find_element(By.ID, "cancel-run").is_displayed()

    stack.clock.now = utcnow()
    retry.click()
    wait_for(
        browser,
        lambda d: (text(d, "#action-result") or "").startswith("Retried: the run is "),
        "no retry result",
    )
    wait_for(browser, lambda d: status_of(d) in ("queued", "running"), "the run did not resume")
    assert stack.coordinator.get_run(run_id).status in ("queued", "running")
    wait_for(browser, lambda d: d.find_element(By.ID, "cancel-run").is_displayed(), "no cancel")

    # A finished run offers neither.
    open_page(browser, f"{stack.url}/dashboard/runs/{stack.runs['trained']}")
    wait_for(browser, lambda d: status_of(d) == "succeeded", "the finished run did not load")
    assert not browser.find_element(By.ID, "cancel-run").is_displayed()
    assert not browser.find_element(By.ID, "retry-run").is_displayed()


def test_cancel_and_retry_from_the_runs_list(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import alert_is_present

    stack.clock.now = utcnow()
    run_id = stack.workers.start("state_identifier", stack.clock.now)
    row = f'tr[data-run-id="{run_id}"]'
    open_page(browser, f"{stack.url}/dashboard")

    def button(action: str) -> Any:
        found = browser.find_elements(By.CSS_SELECTOR, f'{row} button[data-action="{action}"]')
        return found[0] if found and found[0].is_enabled() else None

    cancel = wait_for(browser, lambda d: button("cancel"), "no cancel button on the queued run")
    assert not browser.find_elements(By.CSS_SELECTOR, f'{row} button[data-action="retry"]')
    stack.clock.now = utcnow()
    cancel.click()
    wait_for(browser, alert_is_present(), "no confirmation asked").accept()
    short = str(run_id)[:8]
    wait_for(browser, lambda d: text(d, "#action-result") == f"Run {short} cancelled.", "no result")
    assert stack.coordinator.get_run(run_id).status == "cancelled"
    assert browser.current_url.split("#")[0].endswith("/dashboard"), "the click opened the run"

    retry = wait_for(browser, lambda d: button("retry"), "no retry button on the cancelled run")
    stack.clock.now = utcnow()
    retry.click()
    wait_for(
        browser,
        lambda d: (text(d, "#action-result") or "").startswith(f"Run {short} retried: "),
        "no retry result",
    )
    assert stack.coordinator.get_run(run_id).status in ("queued", "running")
    wait_for(browser, lambda d: button("cancel"), "no cancel button on the retried run")
    # A finished run's row offers neither.
    trained = f'tr[data-run-id="{stack.runs["trained"]}"] button'
    assert not browser.find_elements(By.CSS_SELECTOR, trained)
    stack.coordinator.cancel_run(run_id)


def test_a_refused_action_shows_why(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    run_id = stack.runs["refused"]
    open_page(browser, f"{stack.url}/dashboard/runs/{run_id}")
    wait_for(browser, lambda d: status_of(d) == "failed", "the failed run did not load")
    retry = browser.find_element(By.ID, "retry-run")
    assert retry.is_displayed()
    # Someone else retries it first: the API answers 409 and the page says so.
    stack.clock.now = utcnow()
    stack.coordinator.retry_run(run_id)
    retry.click()
    wait_for(
        browser,
        lambda d: "HTTP 409" in (text(d, "#action-result.error") or ""),
        "the refusal is not shown",
    )
    wait_for(browser, lambda d: status_of(d) in ("queued", "running"), "the page did not refresh")
    stack.coordinator.cancel_run(run_id)


def test_the_model_links_to_its_mlflow_run_and_version(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    config = httpx.get(f"{stack.url}/config/dashboard")
    assert config.status_code == 401, "the config is behind the API's token"
    config = httpx.get(
        f"{stack.url}/config/dashboard", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert config.json() == {"mlflow_ui_url": MLFLOW_UI}

    open_page(browser, f"{stack.url}/dashboard/runs/{stack.runs['trained']}")
    link = wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#model a.model-version"),
        "the model version is not a link",
    )[0]
    assert link.text == "v2"
    assert link.get_attribute("href") == f"{MLFLOW_UI}/#/models/state_identifier/versions/2"
    run_link = browser.find_element(By.CSS_SELECTOR, "#model a.mlflow-run-id")
    assert run_link.text == MLFLOW_RUN_ID
    assert run_link.get_attribute("href") == f"{MLFLOW_UI}/#/runs/{MLFLOW_RUN_ID}"
    assert run_link.get_attribute("rel") == "noopener noreferrer"


def test_without_an_mlflow_ui_the_ids_are_text(stack: Stack, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    port = free_port()
    app = create_app(
        CoordinatorSettings(state_dir=tmp_path),
        coordinator=stack.coordinator,
        champions=StubChampions(),
        run_loops=False,
    )
    server, thread = _serve(app, port)
    try:
        browser.get(f"http://127.0.0.1:{port}/dashboard/runs/{stack.runs['trained']}")
        wait_for(
            browser,
            lambda d: text(d, "#model .mlflow-run-id") == MLFLOW_RUN_ID,
            "the MLflow run id is not shown",
        )
        assert text(browser, "#model .model-version") == "v2"
        assert browser.find_elements(By.CSS_SELECTOR, "#model a") == []
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_failed_attempt_shows_its_log_tail_redacted(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    run_id = stack.runs["failed"]
    answer = httpx.get(
        f"{stack.url}/runs/{run_id}/stages/aggregation/attempts/1/log",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["truncated"] is True and len(body["log"]) <= MAX_LOG_TAIL_CHARS + 100
    assert SECRET not in body["log"] and "sig=REDACTED" in body["log"]
    assert body["error"] == "DataValidationError: could not read part-1.csv: HTTP 403"
    missing = httpx.get(
        f"{stack.url}/runs/{run_id}/stages/aggregation/attempts/7/log",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert missing.status_code == 404

    open_page(browser, f"{stack.url}/dashboard/runs/{run_id}")
    summary = wait_for(
        browser,
        lambda d: d.find_elements(
            By.CSS_SELECTOR, '.attempt-log[data-stage="aggregation"][data-attempt="1"] summary'
        ),
        "no log for the failed attempt",
    )[0]
    assert text(browser, ".attempt-log pre") is None, "collapsed until opened"
    summary.click()
    log = wait_for(browser, lambda d: text(d, ".attempt-log pre.log"), "the log tail did not load")
    assert "PermissionError" in log and "sig=REDACTED" in log and SECRET not in log
    assert "Only the end of the log is kept." in (text(browser, ".attempt-log") or "")


def test_the_running_stage_shows_its_log_as_it_grows(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    w, s = stack.workers, timedelta(seconds=1)
    start = utcnow() - 30 * s
    run_id = w.start("state_identifier", start)
    t = w.succeeded(run_id, "aggregation", start, 1.0)
    t = w.succeeded(run_id, "split", t, 1.0)
    w.started(run_id, "train", t)
    stack.clock.now = utcnow()
    # What the train worker writes every few seconds while the attempt runs.
    blob = failure_log_blob(run_id, "train", 1)
    first = "10:00:01 INFO recipes.train: epoch 1/20 loss 0.912\n"
    stack.coordinator.blobs.upload_blob(blob, first.encode())
    open_page(browser, f"{stack.url}/dashboard/runs/{run_id}")

    def live(d: Any) -> str:
        return text(d, "#live-log pre") or ""

    wait_for(browser, lambda d: "epoch 1/20" in live(d), "no live log of the running stage")
    assert text(browser, "#live-log h2").lower() == "log of train attempt 1 (live)"
    grown = first + f"10:00:04 INFO recipes.train: saved to https://a.blob/x?sig={SECRET}\n"
    stack.coordinator.blobs.upload_blob(blob, (grown + "epoch 2/20 loss 0.7\n").encode())
    wait_for(browser, lambda d: "epoch 2/20" in live(d), "the live log did not follow")
    assert SECRET not in live(browser)

    t = w.succeeded(run_id, "train", t, 40.0, metrics={"silhouette": 0.5})
    stack.clock.now = utcnow()
    wait_for(
        browser,
        lambda d: not d.find_element(By.ID, "live-log").is_displayed(),
        "the live log stays after its stage ended",
    )
    stack.coordinator.cancel_run(run_id)


def test_a_cancelled_then_retried_run_counts_only_its_active_time(
    stack: Stack, browser: Any
) -> None:
    run_id = stack.runs["resumed"]
    open_page(browser, f"{stack.url}/dashboard/runs/{run_id}")
    wait_for(browser, lambda d: status_of(d) == "succeeded", "the run did not load")
    # 16 minutes from start to end, 10 of them cancelled.
    assert fact(browser, "duration") == "6m 00s"

    open_page(browser, f"{stack.url}/dashboard")
    cell = f'tr[data-run-id="{run_id}"] td.duration'
    wait_for(browser, lambda d: text(d, cell) == "6m 00s", "the list counts the cancelled time")


def test_the_runs_list_marks_the_champion_and_old_champions(stack: Stack, browser: Any) -> None:
    open_page(browser, f"{stack.url}/dashboard")
    trained = f'tr[data-run-id="{stack.runs["trained"]}"] td.model'
    resumed = f'tr[data-run-id="{stack.runs["resumed"]}"] td.model'
    wait_for(browser, lambda d: text(d, trained) == "v2 ★ champion", "the champion is not marked")
    assert text(browser, resumed) == "v1 was champion"


def test_a_version_promoted_by_hand_then_replaced_shows_was_champion_from_the_history(
    stack: Stack, browser: Any
) -> None:
    """The marks come from the coordinator's own promotion history (GET
    /models/{name}/promotions): an operator's promote counts, and the registry is never asked."""
    w, s, model = stack.workers, timedelta(seconds=1), "state_identifier.pump-7"
    picked = _registered(
        w, model, "1", 0.4, utcnow() - 4 * 60 * s, promoted=False, reason="not better"
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    promoted = httpx.post(
        f"{stack.url}/models/{model}/champion",
        json={"version": "1", "reason": "hand-picked"},
        headers=headers,
    )
    assert promoted.status_code == 200, promoted.text
    best = _registered(w, model, "2", 0.9, utcnow() - 2 * 60 * s, promoted=True, reason="beats v1")
    stack.clock.now = utcnow()

    open_page(browser, f"{stack.url}/dashboard")
    best_cell = f'tr[data-run-id="{best}"] td.model'
    wait_for(browser, lambda d: text(d, best_cell) == "v2 ★ champion", "the champion unmarked")
    assert text(browser, f'tr[data-run-id="{picked}"] td.model') == "v1 was champion"
    assert stack.champions.asked == 0, "the dashboard asked the registry"

    history = httpx.get(f"{stack.url}/models/{model}/promotions", headers=headers).json()
    assert history["champion"] == "2"
    assert [(p["version"], p["run_id"], p["reason"]) for p in history["promotions"]] == [
        ("1", None, "hand-picked"),
        ("2", str(best), "beats v1"),
    ]


def test_the_list_shows_loading_then_an_error_once_then_clears_it(
    stack: Stack, browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = stack.coordinator.list_runs
    answer = threading.Event()
    failures = 0

    def slow(**kwargs: Any) -> Any:
        answer.wait(WAIT_S)
        return original(**kwargs)

    def failing(**kwargs: Any) -> Any:
        nonlocal failures
        failures += 1
        raise RetryableError("the run store is unavailable")

    # First load: the list says it is loading (not "no runs") until the answer comes.
    monkeypatch.setattr(stack.coordinator, "list_runs", slow)
    open_page(browser, f"{stack.url}/dashboard")
    wait_for(
        browser,
        lambda d: d.execute_script("return !document.getElementById('loading').hidden"),
        "no loading state",
    )
    assert text(browser, "#loading") == "Loading runs…"
    assert browser.execute_script("return document.getElementById('empty').hidden") is True
    assert browser.execute_script("return document.querySelectorAll('#runs tbody tr').length") == 0
    answer.set()
    wait_for(
        browser,
        lambda d: d.execute_script(
            "return document.getElementById('loading').hidden"
            " && document.querySelectorAll('#runs tbody tr').length > 0"
        ),
        "the runs did not replace the loading state",
    )

    # Failing polls: the error is shown once (the banner is not redrawn on each poll).
    monkeypatch.setattr(stack.coordinator, "list_runs", failing)
    banner = wait_for(browser, lambda d: text(d, "#load-error"), "the load error is not shown")
    assert "503" in banner and banner.count("the run store is unavailable") == 1
    browser.execute_script("document.getElementById('load-error').firstChild.__seen = true")
    seen = failures
    wait_for(browser, lambda d: failures >= seen + 2, "the page stopped polling after an error")
    assert browser.execute_script(
        "return document.getElementById('load-error').firstChild.__seen === true"
    ), "the banner was redrawn for the same error"
    assert (text(browser, "#load-error") or "").count("the run store is unavailable") == 1

    # The next successful poll clears it.
    monkeypatch.setattr(stack.coordinator, "list_runs", original)
    wait_for(
        browser,
        lambda d: d.execute_script("return document.getElementById('load-error').hidden"),
        "the error stayed after a successful poll",
    )


def _registered(
    w: Workers,
    model: str,
    version: str,
    silhouette: float,
    start: datetime,
    *,
    promoted: bool,
    reason: str,
) -> UUID:
    """A state_identifier run through all five stages, a second each, registering ``model``
    ``version``; its tag stage promoted it or not."""
    run = w.start("state_identifier", start)
    t = w.succeeded(run, "aggregation", start, 1.0)
    t = w.succeeded(run, "split", t, 1.0)
    t = w.succeeded(run, "train", t, 1.0, metrics={"silhouette": silhouette})
    t = w.succeeded(run, "register", t, 1.0, model_name=model, model_version=version)
    w.succeeded(run, "tag", t, 1.0, model_name=model, promoted=promoted, reason=reason)
    return run
