"""What the Azure deployment relies on in the services: the worker's HTTP health endpoint
(Container Apps probes), the run store's per-connection password (PostgreSQL with Entra ID
tokens), the gauge behind the "no successful run for N days" alert, Entra ID for telemetry,
and the API's exposure and role rules."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import SecretStr
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from cli.stack import free_port
from coordinator.auth import (
    READ_ROLE,
    WRITE_ROLE,
    Authenticator,
    Principal,
    check_exposure,
    is_loopback,
)
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared import telemetry
from shared.errors import ConfigurationError
from shared.healthcheck import serve_health
from shared.settings import CommonSettings

POSTGRES_URL = os.environ.get(
    "RETRAINER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)


# -- worker health over HTTP --------------------------------------------------------------------


def test_the_health_endpoint_follows_the_health_file(tmp_path: Path) -> None:
    alive = tmp_path / "worker.alive"
    port = free_port()
    server = serve_health(port, alive, max_age_s=30, host="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/healthz").status_code == 503  # not received yet
        alive.touch()
        assert httpx.get(f"{url}/healthz").status_code == 200
        stale = time.time() - 60
        os.utime(alive, (stale, stale))
        assert httpx.get(f"{url}/healthz").status_code == 503
        assert httpx.get(f"{url}/other").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


# -- the run store's per-connection password ----------------------------------------------------


def test_each_new_database_connection_gets_a_fresh_password() -> None:
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    finally:
        admin.dispose()
    issued: list[str] = []

    def token() -> str:
        issued.append(f"token-{len(issued)}")
        return issued[-1]

    # The test server trusts local connections: the password is sent and ignored.
    store = RunStore.from_url(POSTGRES_URL, password=token)
    try:
        store.ping()
        assert issued == ["token-0"]
        store.close()  # drops the pooled connection: the next one authenticates again
        store.ping()
        assert issued == ["token-0", "token-1"]
    finally:
        store.close()


# -- the time since each model's last success -------------------------------------------------


def test_the_gauge_reports_the_age_of_each_models_last_success() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    now = datetime.now(UTC)
    successes: dict[tuple[str, str | None], datetime] = {
        ("state_identifier", None): now - timedelta(days=2),
        ("species_distribution", "cygnus-olor"): now - timedelta(days=9),
    }
    with telemetry.use_providers(meter_provider=provider):
        telemetry.observe_last_successes(lambda: successes)
        points = gauge_points(reader)
    provider.shutdown()
    ages = {tuple(sorted(point.attributes.items())): point.value for point in points}
    recipe, entity = telemetry.ATTR_RECIPE, telemetry.ATTR_ENTITY
    assert set(ages) == {
        ((recipe, "state_identifier"),),
        ((entity, "cygnus-olor"), (recipe, "species_distribution")),
    }
    assert 2 * 86400 <= ages[((recipe, "state_identifier"),)] < 2 * 86400 + 600
    assert ages[((entity, "cygnus-olor"), (recipe, "species_distribution"))] >= 9 * 86400


def test_the_gauge_skips_an_export_when_the_store_fails() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)

    def broken() -> dict[tuple[str, str | None], datetime]:
        raise OSError("database is down")

    with telemetry.use_providers(meter_provider=provider):
        telemetry.observe_last_successes(broken)
        assert gauge_points(reader) == []
    provider.shutdown()


def gauge_points(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    if data is None:
        return []
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == telemetry.METRIC_SINCE_LAST_SUCCESS
        for point in metric.data.data_points
    ]


# -- telemetry with Entra ID -------------------------------------------------------------------


def test_entra_auth_gives_the_azure_exporter_a_token_credential(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        "azure.monitor.opentelemetry.configure_azure_monitor", lambda **kw: calls.append(kw)
    )
    for entra in (False, True):
        telemetry._configure_azure(
            "coordinator",
            connection_string="InstrumentationKey=00000000-0000-0000-0000-000000000000",
            service_version=None,
            live_metrics=False,
            offline_storage=False,
            performance_counters=False,
            entra_auth=entra,
        )
    without, with_entra = calls
    assert "credential" not in without
    assert hasattr(with_entra["credential"], "get_token")
    settings = CommonSettings(_env_file=None, telemetry_entra_auth=True)  # type: ignore[call-arg]
    assert settings.telemetry_entra_auth is True


# -- API exposure and roles --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.4", False),
     ("example.org", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def settings(**values: Any) -> CoordinatorSettings:
    return CoordinatorSettings(_env_file=None, **values)  # type: ignore[call-arg]


def test_an_open_api_may_listen_on_loopback_only() -> None:
    check_exposure(settings(host="127.0.0.1"))
    with pytest.raises(ConfigurationError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_exposure(settings(host="0.0.0.0"))
    with pytest.raises(ConfigurationError):  # half an Entra configuration is none
        check_exposure(settings(host="0.0.0.0", auth_tenant_id="t"))
    check_exposure(settings(host="0.0.0.0", api_token=SecretStr("t" * 32)))
    check_exposure(settings(host="0.0.0.0", auth_tenant_id="t", auth_audience="a"))


def test_entra_needs_both_tenant_and_audience() -> None:
    with pytest.raises(ConfigurationError, match="RETRAINER_AUTH_AUDIENCE"):
        Authenticator.from_settings(settings(auth_tenant_id="t"))
    assert not Authenticator.from_settings(settings()).enabled


def test_runs_write_includes_reading_and_the_static_token_everything() -> None:
    reader = Principal("r", frozenset({READ_ROLE}))
    writer = Principal("w", frozenset({WRITE_ROLE}))
    nobody = Principal("n", frozenset({"something.else"}))
    static = Principal("s", frozenset(), static=True)
    assert reader.allows(READ_ROLE) and not reader.allows(WRITE_ROLE)
    assert writer.allows(READ_ROLE) and writer.allows(WRITE_ROLE)
    assert not nobody.allows(READ_ROLE)
    assert static.allows(READ_ROLE) and static.allows(WRITE_ROLE)


@pytest.fixture
def no_secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("RETRAINER_"):
            monkeypatch.delenv(name)
    yield


def test_secrets_do_not_show_in_settings(no_secrets_in_env: None) -> None:
    values = {
        "servicebus_connection_string": "Endpoint=sb://x/;SharedAccessKey=sb-key-123",
        "blob_connection_string": "AccountName=a;AccountKey=blob-key-456",
        "applicationinsights_connection_string": "InstrumentationKey=ikey-789",
        "database_url": "postgresql://user:db-password-0@host/db",
        "api_token": "api-token-abc",
        "trigger_webhook_secret": "webhook-secret-def",
    }
    configured = settings(**values)
    shown = repr(configured) + str(configured) + configured.model_dump_json()
    for secret in values.values():
        assert secret not in shown


# -- the Azure ML workspace's MLflow -----------------------------------------------------------


def test_azureml_tracking_uris_resolve_to_the_workspace_plugin() -> None:
    """On Azure, RETRAINER_MLFLOW_TRACKING_URI is the workspace's azureml:// URI; the tracking
    store, model registry and artifact repository for it come from azureml-mlflow (built
    here without contacting Azure)."""
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    uri = (
        "azureml://westeurope.api.azureml.ms/mlflow/v1.0/subscriptions/0000/resourceGroups/rg"
        "/providers/Microsoft.MachineLearningServices/workspaces/ws"
    )
    for builder in (
        _tracking_store_registry.get_store_builder(uri),
        _get_store_registry().get_store_builder(uri),
        _artifact_repository_registry._registry["azureml"],
    ):
        assert builder.__module__.startswith("azureml.mlflow"), builder


# -- OTLP (the compose stack's Aspire dashboard) ----------------------------------------------


OTLP_SCRIPT = """
import logging, uuid
from shared import telemetry
logging.basicConfig(level=logging.INFO)
assert telemetry.configure_telemetry("coordinator", exporter="otlp") == "otlp"
run = uuid.uuid4()
with telemetry.coordinator_span(run, "start_run"):
    telemetry.emit_event(telemetry.EVENT_RUN_STARTED, {telemetry.ATTR_TRIGGER: "api"})
logging.getLogger("retrainer.test").warning("a plain log line")
telemetry.shutdown_telemetry()
"""


def test_the_otlp_exporter_sends_spans_metrics_and_logs(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append((self.path, self.headers.get("Content-Type", "")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
        }
        result = subprocess.run(
            [sys.executable, "-c", OTLP_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=Path(__file__).parents[2],
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    paths = {path for path, _ in received}
    assert {"/v1/traces", "/v1/logs"} <= paths, received
    assert all(kind == "application/x-protobuf" for _, kind in received)
