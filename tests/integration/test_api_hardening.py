"""Hostile requests against the coordinator's API: every input bounded (413, 422, 400, never a
500), unexpected errors answered 500 on a connection that stays open, a store that cannot
write answered 503 with Retry-After, and secrets in query strings kept out of the access log
and the request spans. Real SQLite bus, local blob store, SQLite run store; a real uvicorn
server where the connection or the access log is the point."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Request
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from cli.stack import free_port
from coordinator.api import create_app
from coordinator.http import SecretsHiddenApp, query_secret
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import StoreUnavailableError
from shared.blobs.port import BlobProperties
from shared.events import blob_created_event
from tests.hostile import DEEP_ARRAY, HUGE_INT
from tests.integration.test_coordinator_api import make_coordinator

SECRET = "s3cret-key-value"
VALID = {"recipe": "state_identifier", "data": "raw/set1", "params": {"n_clusters": 3}}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    coordinator = make_coordinator(tmp_path)
    yield coordinator
    coordinator.close()


@pytest.fixture
def settings(tmp_path: Path) -> CoordinatorSettings:
    return CoordinatorSettings(state_dir=tmp_path, trigger_webhook_secret=SecretStr(SECRET))


@pytest.fixture
def client(coordinator: Coordinator, settings: CoordinatorSettings) -> Iterator[TestClient]:
    app = create_app(settings, coordinator=coordinator, run_loops=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def post_raw(client: TestClient, path: str, body: bytes, **params: str) -> httpx.Response:
    return client.post(
        path, content=body, params=params, headers={"content-type": "application/json"}
    )


# --- bounded inputs ----------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(client: TestClient) -> None:
    big = json.dumps({**VALID, "params": {"x": "a" * 100_000}}).encode()

    declared = post_raw(client, "/runs", big)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    streamed = client.post("/runs", content=chunks(), headers={"content-type": "application/json"})

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert "larger than 65536 bytes" in declared.json()["detail"]
    assert client.get("/runs").json()["total"] == 0


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"x": "a" * 5000}, "params.x: longer than 4096 characters"),
        ({"x": [[[[[[[[[1]]]]]]]]]}, "nested deeper than 8 levels"),
        ({f"k{i}": i for i in range(101)}, "at most 100 items"),
        ({"x": list(range(101))}, "params.x: more than 100 items"),
        ({"x": 2**64}, "params.x: integer beyond 64 bits"),
    ],
)
def test_params_beyond_their_bounds_are_422_without_an_echo(
    client: TestClient, params: dict[str, Any], problem: str
) -> None:
    response = client.post("/runs", json={**VALID, "params": params})

    assert response.status_code == 422, response.text
    assert problem in response.text
    assert len(response.content) < 2000, "the refused value is not echoed back"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({**VALID, "priority": 1}, 422),  # an unknown top-level field
        ({**VALID, "recipe": "r" * 201}, 422),
        ({**VALID, "data": "raw/" + "d" * 1100}, 422),
        ({**VALID, "params": []}, 422),
    ],
)
def test_unknown_or_oversized_fields_are_refused(
    client: TestClient, body: dict[str, Any], status: int
) -> None:
    assert client.post("/runs", json=body).status_code == status


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xfe",
        DEEP_ARRAY,
        b'{"recipe": "state_identifier", "data": "raw/set1", "params": {"x": ' + HUGE_INT + b"}}",
        b'{"recipe": "state_identifier", "data": "raw/set1", "params": {"x": NaN}}',
        b'{"recipe": "state_identifier", "data": "raw/set1", "params": {"x": Infinity}}',
    ],
    ids=["not-json", "not-utf8", "deep", "huge-int", "nan", "infinity"],
)
def test_an_unparseable_run_request_is_a_4xx(client: TestClient, raw: bytes) -> None:
    response = post_raw(client, "/runs", raw)

    assert 400 <= response.status_code < 500, response.text
    assert client.get("/runs").json()["total"] == 0


@pytest.mark.parametrize(
    "query",
    [
        "offset=9223372036854775808",
        "offset=1000001",
        "offset=-1",
        "limit=0",
        "limit=501",
        "limit=99999999999999999999999",
        "status=nonsense",
    ],
)
def test_query_parameters_out_of_range_are_422(client: TestClient, query: str) -> None:
    assert client.get(f"/runs?{query}").status_code == 422


def test_hostile_webhook_bodies_are_400(client: TestClient) -> None:
    event = blob_created_event_for("datasets/state-identifier/x/a.csv")
    bodies = [
        json.dumps([{**event, "data": {**event["data"], "api": []}}]).encode(),
        DEEP_ARRAY,
        json.dumps([event])
        .replace('"contentLength": ', '"contentLength": 1' + "0" * 4999)
        .encode(),
        b"[" + HUGE_INT + b"]",
    ]

    statuses = [post_raw(client, "/events/blob", body, code=SECRET).status_code for body in bodies]

    assert statuses == [400, 400, 400, 400]


def blob_created_event_for(name: str) -> dict[str, Any]:
    return blob_created_event(BlobProperties(name, '"0x1"', 10, datetime.now(UTC)))


# --- failures ----------------------------------------------------------------------------


def test_a_store_that_cannot_write_is_503_with_retry_after(
    client: TestClient, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise StoreUnavailableError("run store unavailable: database or disk is full")

    monkeypatch.setattr(coordinator.store, "apply", full)

    response = client.post("/runs", json=VALID)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "disk is full" in response.json()["detail"]


# --- a real server -----------------------------------------------------------------------


class AccessLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def server(
    coordinator: Coordinator, settings: CoordinatorSettings
) -> Iterator[tuple[str, AccessLog]]:
    access = AccessLog()
    logger = logging.getLogger("uvicorn.access")
    logger.addHandler(access)
    port = free_port()
    app = create_app(settings, coordinator=coordinator, run_loops=False)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", log_config=None)
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}", access
    finally:
        uv.should_exit = True
        thread.join(30)
        logger.removeHandler(access)


def exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one HTTP/1.1 request and read its whole (Content-Length) response."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_unexpected_error_is_a_500_with_an_id_and_the_connection_stays_open(
    server: tuple[str, AccessLog],
    coordinator: Coordinator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    address, _ = server
    host, port = address.split(":")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(coordinator, "list_runs", broken)
    get = f"GET /runs HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
    health = f"GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        first = exchange(sock, get)
        second = exchange(sock, health)  # the same connection

    assert first.startswith(b"HTTP/1.1 500")
    assert b"connection: close" not in first.lower()
    error_id = json.loads(first.partition(b"\r\n\r\n")[2])["error_id"]
    assert second.startswith(b"HTTP/1.1 200")
    assert any(error_id in record.getMessage() for record in caplog.records)


def test_the_webhook_key_stays_out_of_the_access_log(server: tuple[str, AccessLog]) -> None:
    address, access = server
    event = blob_created_event_for("datasets/state-identifier/x/a.csv")

    response = httpx.post(
        f"http://{address}/events/blob", params={"code": SECRET, "other": "kept"}, json=[event]
    )

    assert response.status_code == 200, response.text  # the key still works
    deadline = time.monotonic() + 10
    while not any("/events/blob" in line for line in access.lines):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.05)
    [line] = [line for line in access.lines if "/events/blob" in line]
    assert SECRET not in line
    assert "code=REDACTED" in line and "other=kept" in line


def test_the_request_span_shows_the_query_without_its_secrets() -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    app = SecretsHiddenApp(telemetry={"tracer_provider": provider})
    seen: list[str | None] = []

    @app.get("/probe")
    def probe(request: Request) -> dict[str, str]:
        seen.append(query_secret(request, "sig"))
        return {"query": str(request.query_params)}

    with TestClient(app) as client:
        shown = client.get("/probe", params={"sig": SECRET, "code": SECRET, "a": "1"}).json()

    attributes = [dict(span.attributes or {}) for span in spans.get_finished_spans()]
    assert SECRET not in json.dumps(attributes, default=str)
    assert any(a.get("url.query") == "sig=REDACTED&code=REDACTED&a=1" for a in attributes)
    assert shown == {"query": "sig=REDACTED&code=REDACTED&a=1"}
    assert seen == [SECRET]
