"""The web dashboard in a real headless Chromium, against a real coordinator over HTTP.

The coordinator is the real app served by uvicorn on a free port, with its run store, bus and
blob store in a temporary directory and no workers: this test plays the workers by sending
their stage events to the bus and letting the coordinator consume them, with timestamps chosen
so that the runs look like real ones (a retry, a cache hit, a failure, a run in flight).

Needs Debian's ``chromium`` and ``chromium-driver`` (``make install`` installs them); fails,
not skips, without them, unless ``RETRAINER_SKIP_BROWSER_TESTS=1``.
``RETRAINER_UPDATE_SCREENSHOTS=1`` also writes ``docs/images/dashboard.png`` and
``docs/images/dashboard-run.png``.
"""

from __future__ import annotations

import base64
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import uvicorn

from cli.stack import free_port
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.models import ManualPromotion, ModelChampions
from coordinator.service import Coordinator
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import (
    Stage,
    StageFailed,
    StageProgress,
    StageStarted,
    StageSucceeded,
    encode,
    utcnow,
)
from shared.promotion import ChampionChange
from shared.recipe_registry import get_recipe
from shared.topology import EVENTS_TOPIC, build_topology
from shared.tracking import ModelVersionNotFoundError, ModelVersionRecord
from tests.clock import Clock

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("RETRAINER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("RETRAINER_CHROMEDRIVER", "/usr/bin/chromedriver"))
REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS_IMAGES = REPO_ROOT / "docs" / "images"
WAIT_S = 15.0
JOB_ID = "retrainer-state_identifier-0b7e-1"

DATA = {
    "state_identifier": "datasets/state-identifier/2026-03-02",
    "image_classification": "datasets/image-classification/2026-03-02",
}
HOSTILE_ERROR = (
    'MLflow answered 502: <html><body><img src=x onerror="window.__xss=1">'
    "<b>Bad Gateway</b></body></html>"
)


# --- a coordinator over HTTP, and someone playing its workers ------------------------------


class Workers:
    """Moves runs by sending what the workers would send, at chosen times."""

    def __init__(self, coordinator: Coordinator, bus: SqliteMessageBus, clock: Clock) -> None:
        self.coordinator = coordinator
        self.bus = bus
        self.clock = clock

    def start(self, recipe: str, at: datetime, *, trigger: str = "api", **params: Any) -> UUID:
        self.clock.now = at
        run = self.coordinator.start_run(recipe, DATA[recipe], params, trigger=trigger)
        return run.id

    def _send(
        self, at: datetime, event: StageStarted | StageProgress | StageSucceeded | StageFailed
    ) -> None:
        self.clock.now = at
        self.bus.send_messages(EVENTS_TOPIC, [encode(event)])
        while self.coordinator.consume_events(max_wait_s=0.05):
            pass

    def progress(self, run: UUID, stage: Stage, at: datetime, **details: Any) -> None:
        self._send(
            at,
            StageProgress(
                correlation_id=run, stage=stage, attempt=1, details=details, occurred_at=at
            ),
        )

    def started(self, run: UUID, stage: Stage, at: datetime, attempt: int = 1) -> None:
        self._send(
            at,
            StageStarted(
                correlation_id=run,
                stage=stage,
                attempt=attempt,
                worker=f"{stage}-7f9c",
                occurred_at=at,
            ),
        )

    def succeeded(
        self,
        run: UUID,
        stage: Stage,
        at: datetime,
        seconds: float,
        attempt: int = 1,
        *,
        cached: bool = False,
        **details: Any,
    ) -> datetime:
        """The stage started at ``at`` and took ``seconds``; returns when it finished."""
        self.started(run, stage, at, attempt)
        end = at + timedelta(seconds=seconds)
        outputs = {
            "aggregation": {"dataset": "artifacts/cache/aggregation/5c1e0a"},
            "split": {"split": "artifacts/cache/split/9d2f41"},
            "train": {"training": "artifacts/cache/train/e07b13"},
            "register": {"registration": f"artifacts/runs/{run}/register"},
            "tag": {"promotion": f"artifacts/runs/{run}/tag"},
        }[stage]
        metrics = details.pop("metrics", {})
        self._send(
            end,
            StageSucceeded(
                correlation_id=run,
                stage=stage,
                attempt=attempt,
                outputs=outputs,
                metrics=metrics,
                details=details,
                cached=cached,
                duration_s=seconds,
                occurred_at=end,
            ),
        )
        return end

    def failed(
        self,
        run: UUID,
        stage: Stage,
        at: datetime,
        seconds: float,
        error: str,
        *,
        attempt: int = 1,
        retryable: bool = False,
    ) -> datetime:
        self.started(run, stage, at, attempt)
        end = at + timedelta(seconds=seconds)
        self._send(
            end,
            StageFailed(
                correlation_id=run,
                stage=stage,
                attempt=attempt,
                error=error,
                error_type="ConnectionResetError" if retryable else "DataValidationError",
                retryable=retryable,
                occurred_at=end,
            ),
        )
        return end


class StubChampions(ModelChampions):
    """The registry's champions as the test sets them (``versions``: model name -> version),
    so that GET and POST /models/{name}/champion touch no MLflow; ``asked`` counts the GETs
    (the dashboard makes none: its marks come from the coordinator's promotion history)."""

    def __init__(self, versions: dict[str, str] | None = None) -> None:
        self.versions = dict(versions or {})
        self.asked = 0

    def get_champion(self, name: str) -> ModelVersionRecord:
        self.asked += 1
        version = self.versions.get(name)
        if version is None:
            raise ModelVersionNotFoundError(f"model {name!r} has no champion")
        return ModelVersionRecord(name=name, version=version, run_id=None)

    def promote(self, name: str, version: str, *, actor: str, reason: str) -> ManualPromotion:
        previous = self.versions.get(name)
        self.versions[name] = version
        change = ChampionChange(
            model_name=name,
            candidate_version=version,
            promoted=True,
            reason=reason,
            champion_version=version,
            previous_version=previous,
            actor=actor,
            at=utcnow(),
        )
        return ManualPromotion(change, ModelVersionRecord(name=name, version=version, run_id=None))


@dataclass
class Deployment:
    url: str
    workers: Workers
    runs: dict[str, UUID]


def _serve(app: Any, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread


def dashboard_coordinator(root: Path) -> tuple[Coordinator, SqliteMessageBus, Workers, Clock]:
    """A coordinator over a fresh store with each of DATA's folders uploaded, the scripted
    workers that report to it over their own bus connection, and the clock both go by."""
    blobs = LocalBlobStore(root / "blobs")
    for prefix in DATA.values():
        blobs.upload_blob(f"{prefix}/part-1.csv", b"timestamp,a\n1,2\n")
    store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
    store.create_tables()
    clock = Clock()
    coordinator = Coordinator(
        bus=SqliteMessageBus(root / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        clock=clock,
    )
    worker_bus = SqliteMessageBus(root / "bus.sqlite", topology=build_topology())
    return coordinator, worker_bus, Workers(coordinator, worker_bus, clock), clock


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    coordinator, worker_bus, workers, _ = dashboard_coordinator(
        tmp_path_factory.mktemp("dashboard")
    )
    runs = _history(workers)
    port = free_port()
    # v2 (the "retried" run's) is the champion now; v1 (the "first" run's) was before it.
    champions = StubChampions({"state_identifier": "2"})
    server, thread = _serve(
        create_app(coordinator=coordinator, champions=champions, run_loops=False), port
    )
    try:
        yield Deployment(f"http://127.0.0.1:{port}", workers, runs)
    finally:
        server.should_exit = True
        thread.join(10)
        coordinator.close()
        worker_bus.close()


def _history(w: Workers) -> dict[str, UUID]:
    """Seven runs of the last half hour, oldest first, in every state a run can end in."""
    now = utcnow()
    s = timedelta(seconds=1)
    runs: dict[str, UUID] = {}

    def pipeline(run: UUID, start: datetime, train_s: float, **model: Any) -> datetime:
        t = w.succeeded(run, "aggregation", start + 0.4 * s, 2.6)
        t = w.succeeded(run, "split", t + 0.3 * s, 0.9)
        t = w.succeeded(run, "train", t + 0.3 * s, train_s, metrics=model.pop("metrics"))
        t = w.succeeded(
            run, "register", t + 0.3 * s, 3.1, model_name=model["name"], model_version=model["v"]
        )
        return w.succeeded(
            run,
            "tag",
            t + 0.3 * s,
            1.2,
            model_name=model["name"],
            promoted=model["promoted"],
            reason=model["reason"],
        )

    start = now - 31 * 60 * s
    runs["first"] = w.start("state_identifier", start, n_clusters=3)
    pipeline(
        runs["first"],
        start,
        41.5,
        metrics={"silhouette": 0.6123, "dunn_index": 0.0831, "inertia": 1843.2},
        name="state_identifier",
        v="1",
        promoted=True,
        reason="no champion yet",
    )

    start = now - 24 * 60 * s
    runs["bad-data"] = w.start("state_identifier", start, trigger="blob")
    w.failed(
        runs["bad-data"],
        "aggregation",
        start + 0.5 * s,
        1.4,
        "datasets/state-identifier/2026-03-02/part-1.csv row 2: "
        "column 'temperature': could not convert 'hot' to float",
    )

    # Train loses its worker once, is retried after the backoff and produces a better model.
    start = now - 17 * 60 * s
    runs["retried"] = w.start("state_identifier", start, n_clusters=4)
    run = runs["retried"]
    t = w.succeeded(run, "aggregation", start + 0.4 * s, 2.4)
    t = w.succeeded(run, "split", t + 0.3 * s, 0.8)
    t = w.failed(
        run,
        "train",
        t + 0.3 * s,
        27.0,
        "worker lost: [Errno 104] Connection reset by peer",
        retryable=True,
    )
    t = w.succeeded(
        run,
        "train",
        t + 2.3 * s,
        39.2,
        attempt=2,
        metrics={"silhouette": 0.6551, "dunn_index": 0.0977, "inertia": 1611.9},
    )
    t = w.succeeded(
        run, "register", t + 0.3 * s, 3.4, model_name="state_identifier", model_version="2"
    )
    w.succeeded(
        run,
        "tag",
        t + 0.3 * s,
        1.1,
        model_name="state_identifier",
        promoted=True,
        reason="silhouette 0.6551 beats champion v1 (0.6123)",
    )

    # The same data again: everything expensive from the cache, and not better.
    start = now - 11 * 60 * s
    runs["cached"] = w.start("state_identifier", start, n_clusters=4)
    run = runs["cached"]
    t = w.succeeded(run, "aggregation", start + 0.3 * s, 0.05, cached=True)
    t = w.succeeded(run, "split", t + 0.2 * s, 0.04, cached=True)
    t = w.succeeded(
        run,
        "train",
        t + 0.2 * s,
        0.06,
        cached=True,
        metrics={"silhouette": 0.6551, "dunn_index": 0.0977, "inertia": 1611.9},
    )
    t = w.succeeded(
        run, "register", t + 0.3 * s, 2.9, model_name="state_identifier", model_version="3"
    )
    w.succeeded(
        run,
        "tag",
        t + 0.3 * s,
        1.0,
        model_name="state_identifier",
        promoted=False,
        reason="silhouette 0.6551 does not beat champion v2 (0.6551)",
    )

    # The registry is down when the model is registered (and its error page is HTML).
    start = now - 7 * 60 * s
    runs["registry-down"] = w.start("state_identifier", start, n_clusters=3)
    run = runs["registry-down"]
    t = w.succeeded(run, "aggregation", start + 0.4 * s, 0.05, cached=True)
    t = w.succeeded(run, "split", t + 0.2 * s, 0.04, cached=True)
    t = w.succeeded(run, "train", t + 0.2 * s, 0.05, cached=True, metrics={"silhouette": 0.6123})
    w.failed(run, "register", t + 0.3 * s, 0.7, HOSTILE_ERROR)

    start = now - 4 * 60 * s
    params: dict[str, Any] = {"weights": "none", "image_size": 64, "epochs": 3}
    runs["cancelled"] = w.start("image_classification", start, **params)
    run = runs["cancelled"]
    t = w.succeeded(run, "aggregation", start + 0.5 * s, 6.2)
    t = w.succeeded(run, "split", t + 0.3 * s, 1.3)
    w.started(run, "train", t + 0.4 * s)
    w.clock.now = t + 48 * s
    w.coordinator.cancel_run(run)

    # In flight: train has been running for about half a minute.
    start = now - 42 * s
    runs["running"] = w.start("state_identifier", start, trigger="blob", n_clusters=5)
    run = runs["running"]
    t = w.succeeded(run, "aggregation", start + 0.4 * s, 3.0)
    t = w.succeeded(run, "split", t + 0.3 * s, 1.0)
    w.started(run, "train", t + 0.3 * s)
    w.progress(run, "train", t + 0.5 * s, compute_backend="azureml", compute_job_id=JOB_ID)
    w.clock.now = utcnow()
    return runs


# --- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if os.environ.get("RETRAINER_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("RETRAINER_SKIP_BROWSER_TESTS=1")
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"headless Chromium is needed for the dashboard test; missing: {', '.join(missing)}. "
            "`make install` installs Debian's chromium and chromium-driver (or point "
            "RETRAINER_CHROMIUM/RETRAINER_CHROMEDRIVER at them; RETRAINER_SKIP_BROWSER_TESTS=1 "
            "skips this test)",
            pytrace=False,
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1360,900",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition, message)


# The pages re-render while a run is active, so they are read in one script call (a snapshot)
# rather than element by element (an element can be replaced between two calls).
ROWS_JS = """
return Array.from(document.querySelectorAll("#runs tbody tr")).map((row) => {
  const cells = {};
  for (const td of row.querySelectorAll("td")) cells[td.className.split(" ")[0]] = td.innerText;
  return [row.dataset.runId, cells];
});
"""


def table(driver: Any) -> list[tuple[str, dict[str, str]]]:
    """The runs list, in order: (run id, {column: text})."""
    return [(run_id, cells) for run_id, cells in driver.execute_script(ROWS_JS)]


def rows(driver: Any) -> dict[str, str]:
    """The runs list as run id -> status."""
    return {run_id: cells["status"] for run_id, cells in table(driver)}


def text(driver: Any, selector: str) -> str:
    value: str = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", selector
    )
    return value


def _click(driver: Any, selector: str) -> bool:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        driver.find_element(By.CSS_SELECTOR, selector).click()
    except StaleElementReferenceException:
        return False
    return True


def screenshot(driver: Any, tmp_path: Path, name: str, *, publish: bool = True) -> Path:
    """A full-page PNG in the test's tmp dir (and, if ``publish``, in docs/images on request)."""
    width, height = driver.execute_script(
        "return [document.documentElement.clientWidth, document.body.scrollHeight];"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path = tmp_path / name
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if publish and os.environ.get("RETRAINER_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / name)
    return path


# --- the tests ----------------------------------------------------------------------------


def test_pages_are_served_without_outside_resources(deployment: Deployment) -> None:
    home = httpx.get(deployment.url + "/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/dashboard"
    page = httpx.get(deployment.url + "/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text
    run_page = httpx.get(f"{deployment.url}/dashboard/runs/{deployment.runs['first']}")
    assert f'data-run-id="{deployment.runs["first"]}"' in run_page.text
    for asset in ("dashboard.js", "dashboard.css", "favicon.svg"):
        response = httpx.get(f"{deployment.url}/dashboard/static/{asset}")
        assert response.status_code == 200, asset
        assert "//cdn" not in response.text and "@import" not in response.text
    assert httpx.get(deployment.url + "/dashboard/runs/not-a-uuid").status_code == 422


def test_runs_list_shows_every_run_and_filters_by_status(
    deployment: Deployment, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    runs = deployment.runs
    browser.get(deployment.url + "/dashboard")
    wait_for(browser, lambda d: len(rows(d)) == len(runs), "the runs list never showed all runs")

    listed = rows(browser)
    assert listed == {
        str(runs["first"]): "succeeded",
        str(runs["bad-data"]): "failed",
        str(runs["retried"]): "succeeded",
        str(runs["cached"]): "succeeded",
        str(runs["registry-down"]): "failed",
        str(runs["cancelled"]): "cancelled",
        str(runs["running"]): "running",
    }
    snapshot = table(browser)
    assert snapshot[0][0] == str(runs["running"]), "newest first"

    def cells(key: str) -> dict[str, str]:
        return next(cells for run_id, cells in snapshot if run_id == str(runs[key]))

    retried = cells("retried")
    assert retried["recipe"].splitlines() == ["state_identifier", DATA["state_identifier"]]
    assert retried["trigger"] == "api"
    # The registry's champion is marked; a promoted model since replaced "was champion".
    wait_for(
        browser,
        lambda d: "champion" in (text(d, f'tr[data-run-id="{runs["retried"]}"] td.model') or ""),
        "the champion is not marked",
    )
    snapshot = table(browser)
    retried = cells("retried")
    assert retried["model"] == "v2 ★ champion"
    assert cells("first")["model"] == "v1 was champion"
    assert retried["duration"].endswith("s") and retried["started"][:2] == "20"
    assert cells("cached")["model"] == "v3"
    assert cells("bad-data")["trigger"] == "blob"
    stage, error = cells("bad-data")["stage"].splitlines()
    assert (stage, cells("bad-data")["model"]) == ("aggregation", "—")
    assert error.startswith("aggregation failed: datasets/state-identifier/2026-03-02/part-1.csv")
    assert cells("running")["stage"] == "train"
    assert text(browser, "#live") == "live"
    assert text(browser, "#count") == "7 runs"

    screenshot(browser, tmp_path, "dashboard.png")

    Select(browser.find_element(By.ID, "status-filter")).select_by_value("failed")
    wait_for(browser, lambda d: len(rows(d)) == 2, "the status filter did not apply")
    assert rows(browser) == {
        str(runs["bad-data"]): "failed",
        str(runs["registry-down"]): "failed",
    }
    assert browser.current_url.endswith("/dashboard?status=failed")
    assert text(browser, "#count") == "2 runs failed"

    browser.refresh()  # the filter is in the address, so it survives a reload
    wait_for(browser, lambda d: len(rows(d)) == 2, "the filter was lost on reload")
    assert Select(browser.find_element(By.ID, "status-filter")).first_selected_option.text == (
        "failed"
    )


def test_clicking_a_run_opens_its_timeline_metrics_and_model(
    deployment: Deployment, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    run_id = str(deployment.runs["retried"])
    browser.get(deployment.url + "/dashboard")
    wait_for(browser, lambda d: run_id in rows(d), "the run is not listed")
    # Re-rendered while the running run is listed: click whatever row is there at the moment.
    wait_for(
        browser,
        lambda d: _click(d, f'tr[data-run-id="{run_id}"] td.recipe'),
        "cannot click the run's row",
    )

    wait_for(
        browser,
        lambda d: (
            d.current_url.endswith(f"/dashboard/runs/{run_id}")
            and d.find_elements(By.CSS_SELECTOR, "#timeline .tl-row[data-stage]")
        ),
        "clicking the row did not open the run's timeline",
    )
    timeline = browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row[data-stage]")
    assert [(r.get_attribute("data-stage"), r.get_attribute("data-status")) for r in timeline] == [
        (stage, "succeeded") for stage in ("aggregation", "split", "train", "register", "tag")
    ]
    train = browser.find_element(By.CSS_SELECTOR, '.tl-row[data-stage="train"]')
    bars = train.find_elements(By.CSS_SELECTOR, ".tl-bar[data-attempt]")
    assert [(b.get_attribute("data-attempt"), b.get_attribute("data-outcome")) for b in bars] == [
        ("1", "failed"),
        ("2", "succeeded"),
    ]
    assert "2 attempts" in train.text
    assert train.find_element(By.CSS_SELECTOR, ".tl-dur").text == "39.2 s"
    widths = [b.size["width"] for b in bars]
    assert widths[1] > widths[0] > 0, "bars are as long as the attempts took"
    assert (
        "ConnectionResetError"
        in browser.find_element(By.CSS_SELECTOR, '.tl-error[data-stage="train"]').text
    )

    metrics = {
        row.get_attribute("data-metric"): row.find_element(By.TAG_NAME, "td").text
        for row in browser.find_elements(By.CSS_SELECTOR, "#metrics tr[data-metric]")
    }
    assert metrics == {"dunn_index": "0.0977", "inertia": "1612", "silhouette": "0.6551"}
    model = browser.find_element(By.ID, "model")
    assert model.find_element(By.CSS_SELECTOR, ".model-version").text == "v2"
    assert model.find_element(By.CSS_SELECTOR, ".champion-badge").text == "★ promoted to champion"
    assert "beats champion v1" in model.text
    assert browser.find_element(By.ID, "run-error").is_displayed() is False
    assert browser.find_element(By.ID, "live").is_displayed() is False
    assert browser.title == "state_identifier succeeded · retrainer"

    screenshot(browser, tmp_path, "dashboard-run.png")

    browser.find_element(By.ID, "back").click()
    wait_for(browser, lambda d: len(rows(d)) >= 7, "back to the list")
    # No script error and no Content-Security-Policy violation on either page.
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_failed_run_shows_its_error_as_text(deployment: Deployment, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{deployment.url}/dashboard/runs/{deployment.runs['bad-data']}")
    error = wait_for(
        browser,
        lambda d: (
            d.find_element(By.ID, "run-error") if d.find_element(By.ID, "run-error").text else False
        ),
        "the failed run's error is not shown",
    )
    assert "aggregation failed:" in error.text and "could not convert 'hot'" in error.text
    statuses = [
        r.get_attribute("data-status")
        for r in browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row[data-stage]")
    ]
    assert statuses == ["failed", "pending", "pending", "pending", "pending"]
    assert browser.find_element(By.CSS_SELECTOR, "#model .body").text == "No model registered."

    # An error that is HTML stays text: nothing of it is parsed, nothing runs.
    browser.get(f"{deployment.url}/dashboard/runs/{deployment.runs['registry-down']}")
    error = wait_for(
        browser,
        lambda d: (
            d.find_element(By.ID, "run-error") if d.find_element(By.ID, "run-error").text else False
        ),
        "the registry error is not shown",
    )
    assert HOSTILE_ERROR in error.text
    assert error.find_elements(By.CSS_SELECTOR, "img, b, body") == []
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    assert browser.execute_script("return window.__xss === undefined") is True


def test_an_active_run_refreshes_until_it_finishes(
    deployment: Deployment, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    run_id = deployment.runs["running"]
    browser.get(f"{deployment.url}/dashboard/runs/{run_id}")
    train = '.tl-row[data-stage="train"][data-status="running"]'
    wait_for(browser, lambda d: text(d, train), "train is not shown running")
    assert text(browser, f'{train} .tl-bar.running[data-attempt="1"]') is not None
    assert text(browser, "#live") == "live"
    assert text(browser, "#model .body") == "Not registered yet."
    # The Azure ML job the train stage was handed to, while it runs.
    job = '#stages tr[data-stage="train"] .compute-job'
    wait_for(browser, lambda d: text(d, job), "the training job is not shown")
    assert text(browser, job) == f"azureml: {JOB_ID}"
    first = text(browser, f"{train} .tl-dur")
    wait_for(
        browser,
        lambda d: text(d, f"{train} .tl-dur") not in (first, None),
        "the running stage's elapsed time does not move",
    )
    screenshot(browser, tmp_path, "dashboard-running.png", publish=False)

    w = deployment.workers
    now = utcnow()
    t = w.succeeded(run_id, "train", now - timedelta(seconds=30), 29.5, metrics={"silhouette": 0.7})
    w.succeeded(run_id, "register", t, 0.2, model_name="state_identifier", model_version="4")
    w.succeeded(run_id, "tag", t, 0.2, model_name="state_identifier", promoted=True, reason="best")

    wait_for(
        browser,
        lambda d: d.execute_script("return document.body.dataset.runStatus") == "succeeded",
        "the page did not refresh to the finished run",
    )
    assert browser.find_element(By.CSS_SELECTOR, "#model .model-version").text == "v4"
    assert browser.find_element(By.ID, "live").is_displayed() is False
    statuses = [
        r.get_attribute("data-status")
        for r in browser.find_elements(By.CSS_SELECTOR, "#timeline .tl-row[data-stage]")
    ]
    assert statuses == ["succeeded"] * 5
