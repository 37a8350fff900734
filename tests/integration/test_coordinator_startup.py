"""The coordinator's API answers while the coordinator connects in the background: /healthz at
once, /readyz and the run endpoints once the run store and the bus are there; a store that is
down is retried, a bad setting fails the start-up for good."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from coordinator.api import create_app
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.startup import CoordinatorUnavailableError, Startup
from shared.errors import ConfigurationError, RetryableError
from shared.triggers import TriggerRule
from tests.waiting import WAIT_S, wait_until


def _until(condition: Callable[[], bool]) -> None:
    wait_until(condition, "the condition", poll_s=0.02)


def test_requests_wait_for_a_start_up_that_is_retried_until_it_succeeds() -> None:
    release = threading.Event()
    calls: list[int] = []
    built = object()

    def build() -> Coordinator:
        calls.append(1)
        if len(calls) < 3:
            raise RetryableError(f"database not up yet ({len(calls)})")
        release.wait(WAIT_S)
        return built  # type: ignore[return-value]

    startup = Startup(build, make_loops=None, request_wait_s=0.0)
    startup.start()
    _until(lambda: len(calls) == 3)
    assert startup.status == "starting"
    assert startup.error == "RetryableError: database not up yet (2)"
    with pytest.raises(CoordinatorUnavailableError, match="still starting"):
        startup.get()

    waiter: list[object] = []
    thread = threading.Thread(target=lambda: waiter.append(startup.get(wait_s=WAIT_S)))
    thread.start()
    release.set()
    thread.join(WAIT_S)

    assert waiter == [built]
    assert startup.status == "ready" and startup.error is None
    startup.stop()


def test_a_permanent_error_ends_the_start_up() -> None:
    def build() -> Coordinator:
        raise ConfigurationError("trigger rule names unknown recipe 'nope'")

    startup = Startup(build, make_loops=None, request_wait_s=WAIT_S)
    startup.start()
    with pytest.raises(CoordinatorUnavailableError, match=r"failed to start: .*unknown recipe"):
        startup.get()
    assert startup.status == "failed"
    startup.stop()


def test_the_api_is_alive_before_its_database_is_reachable(tmp_path: Path) -> None:
    settings = CoordinatorSettings(
        state_dir=tmp_path,
        # Nothing listens on port 1: the store cannot connect, the start-up keeps trying.
        database_url=SecretStr(
            "postgresql+psycopg://nobody@127.0.0.1:1/retrainer?connect_timeout=2"
        ),
        startup_request_wait_s=0.05,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        _until(lambda: "startup" in client.get("/readyz").json()["checks"])
        _until(lambda: "Connection refused" in client.get("/readyz").json()["checks"]["startup"])
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "starting"
        runs = client.get("/runs")
        assert runs.status_code == 503
        assert runs.headers["retry-after"] == "1"
        assert "still starting" in runs.json()["detail"]


def test_a_bad_setting_makes_the_api_unhealthy_naming_it(tmp_path: Path) -> None:
    settings = CoordinatorSettings(
        state_dir=tmp_path,
        trigger_rules=[TriggerRule(container="datasets", prefix="x/", recipe="no_such_recipe")],
    )
    with TestClient(create_app(settings)) as client:
        _until(lambda: client.get("/healthz").status_code == 503)
        health = client.get("/healthz").json()
        assert health["status"] == "failed" and "no_such_recipe" in health["error"]
        ready = client.get("/readyz").json()
        assert ready["status"] == "failed" and "no_such_recipe" in ready["checks"]["startup"]
        assert client.get("/runs").status_code == 503


def test_the_api_becomes_ready_and_serves_runs(tmp_path: Path) -> None:
    settings = CoordinatorSettings(state_dir=tmp_path, consumer_wait_s=0.1)
    with TestClient(create_app(settings)) as client:
        # Waits for the start-up instead of failing while it is under way.
        assert client.get("/runs").json()["total"] == 0
        _until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json()["checks"] == {
            "database": "ok",
            "bus": "ok",
            "loops": "ok",
        }
