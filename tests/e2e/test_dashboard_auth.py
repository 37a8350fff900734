"""The dashboard sends the API token: a coordinator with a static token answers the pages'
data requests with 401 until the token is given, in the page's form or as #token=... in the
address (headless Chromium, as tests/e2e/test_dashboard.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import SecretStr

from cli.stack import free_port
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.recipe_registry import get_recipe
from shared.topology import build_topology
from tests.e2e.test_dashboard import _serve, browser, rows, text, wait_for

pytestmark = pytest.mark.slow

TOKEN = "dashboard-token-" + "z" * 24
__all__ = ["browser"]  # the fixture, shared with test_dashboard


@dataclass(frozen=True)
class Protected:
    url: str
    run: UUID


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Protected]:
    root: Path = tmp_path_factory.mktemp("dashboard-auth")
    blobs = LocalBlobStore(root / "blobs")
    blobs.upload_blob("datasets/state-identifier/a/part-1.csv", b"timestamp,a\n1,2\n")
    store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(root / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
    )
    run = coordinator.start_run("state_identifier", "datasets/state-identifier/a", {})
    settings = CoordinatorSettings(state_dir=root, api_token=SecretStr(TOKEN))
    port = free_port()
    server, thread = _serve(create_app(settings, coordinator=coordinator, run_loops=False), port)
    try:
        yield Protected(f"http://127.0.0.1:{port}", run.id)
    finally:
        server.should_exit = True
        thread.join(10)
        coordinator.close()


def test_the_runs_page_asks_for_the_token_and_then_sends_it(
    protected: Protected, browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{protected.url}/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{protected.url}/dashboard")
    wait_for(browser, lambda d: "401" in (text(d, "#load-error") or ""), "no 401 banner")
    assert rows(browser) == {}
    field = browser.find_element(By.CSS_SELECTOR, ".token-form input")
    field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, ".token-form button").click()
    wait_for(browser, lambda d: str(protected.run) in rows(d), "the run did not show")
    assert browser.execute_script("return document.getElementById('load-error').hidden")


def test_a_token_in_the_address_is_used_and_dropped_from_it(
    protected: Protected, browser: Any
) -> None:
    browser.get(f"{protected.url}/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{protected.url}/dashboard/runs/{protected.run}#token={TOKEN}")
    wait_for(
        browser,
        lambda d: "state_identifier" in (text(d, "main") or ""),
        "the run page did not load with the token",
    )
    assert "token" not in browser.current_url
