"""The production path without Docker: every service as its own process on the Azure
adapters — the real azure-servicebus SDK against the test AMQP broker, the real
azure-storage-blob SDK against a real Azurite — started by a blob upload.

This test plays Event Grid: it uploads with the Azure SDK, then delivers Event Grid-shaped
``Microsoft.Storage.BlobCreated`` events to the ``blob-events`` Service Bus topic, as an Event
Grid subscription with a Service Bus endpoint does.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.storage.blob import BlobServiceClient, ContentSettings

from cli.main import prepare_state, stack_env, watch_run
from cli.stack import Stack, free_port
from recipes.state_identifier import recipe as state_identifier
from shared.settings import CommonSettings
from shared.topology import BLOB_EVENTS_TOPIC, build_topology
from tests.servicebus_broker import ServiceBusTestBroker

pytestmark = pytest.mark.slow

LOCK_S = 5.0
FOLDER = "machines/line-7/2026-11-23"


def event_grid_blob_created(
    container: str, name: str, etag: str, size: int, url: str
) -> dict[str, Any]:
    return {
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage"
        "/storageAccounts/devstoreaccount1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": "Microsoft.Storage.BlobCreated",
        "id": str(uuid.uuid4()),
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "api": "PutBlob",
            "eTag": etag,
            "contentType": "text/csv",
            "contentLength": size,
            "blobType": "BlockBlob",
            "url": url,
            "sequencer": "0000000000000000000000000000000000000000000000000000000000000001",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


@pytest.fixture
def broker() -> Iterator[ServiceBusTestBroker]:
    with ServiceBusTestBroker(build_topology(lock_duration_s=LOCK_S)) as running:
        yield running
    assert running.errors == [], f"the test broker failed: {running.errors!r}"


def test_blob_upload_event_runs_the_pipeline_on_azure_adapters(
    azurite: str, broker: ServiceBusTestBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    # Azurite is the session's, shared with other modules' stacks in this worker: a container
    # of this test's own.
    data_container = f"datasets-{uuid.uuid4().hex[:12]}"
    azure_env = {
        "RETRAINER_STATE_DIR": str(state_dir),
        "RETRAINER_BUS": "servicebus",
        "RETRAINER_SERVICEBUS_CONNECTION_STRING": broker.connection_string,
        "RETRAINER_BUS_LOCK_DURATION_S": str(LOCK_S),
        "RETRAINER_BLOB": "azure",
        "RETRAINER_BLOB_CONNECTION_STRING": azurite,
        "RETRAINER_TRIGGER_RULES": json.dumps(
            [
                {
                    "container": data_container,
                    "prefix": "machines/line-7/",
                    "recipe": "state_identifier",
                }
            ]
        ),
        "RETRAINER_TRIGGER_DEBOUNCE_S": "1",
    }
    for key, value in azure_env.items():
        monkeypatch.setenv(key, value)
    settings = CommonSettings()
    prepare_state(settings)
    port = free_port()
    stack = Stack({**azure_env, **stack_env(settings, port)}, log_dir=state_dir / "logs")

    # The data arrives with the Azure SDK, as a data engineer's job would upload it.
    sample = tmp_path / "sample"
    state_identifier.write_sample_data(sample, 11)
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.get_container_client(data_container)
    container.create_container()
    events = []
    for path in sorted(p for p in sample.rglob("*.csv")):
        name = f"{FOLDER}/{path.relative_to(sample).as_posix()}"
        data = path.read_bytes()
        blob = container.get_blob_client(name)
        uploaded = blob.upload_blob(data, content_settings=ContentSettings(content_type="text/csv"))
        events.append(
            event_grid_blob_created(data_container, name, uploaded["etag"], len(data), blob.url)
        )

    with stack:
        url = f"http://127.0.0.1:{port}"
        stack.wait_ready(url, timeout_s=90)
        with (
            ServiceBusClient.from_connection_string(broker.connection_string) as bus_client,
            bus_client.get_topic_sender(BLOB_EVENTS_TOPIC) as sender,
        ):
            # Event Grid delivers at least once: the first event arrives twice.
            for event in [*events, events[0]]:
                sender.send_messages(
                    ServiceBusMessage(json.dumps(event), message_id=str(uuid.uuid4()))
                )

        with httpx.Client(base_url=url, timeout=10.0) as client:
            run = _wait_for_blob_run(client)
            final = watch_run(client, run["id"], out=lambda _line: None, poll_s=0.3, timeout_s=300)
            time.sleep(2)  # a second run would have been debounced and started by now
            runs = client.get("/runs").json()["runs"]

    assert final["status"] == "succeeded", final
    assert final["trigger"] == "blob"
    assert final["data"] == f"{data_container}/{FOLDER}"
    assert len(runs) == 1, "a burst of uploads and a duplicate delivery start one run"
    assert final["model"]["champion"] is True

    # Stage outputs went to Azurite, not to a local directory.
    artifacts = service.get_container_client("artifacts")
    stored = [blob.name for blob in artifacts.list_blobs(name_starts_with="cache/train/")]
    assert any(name.endswith("training.json") for name in stored)
    assert not (state_dir / "blobs").exists()

    import mlflow

    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    model = mlflow.pyfunc.load_model("models:/state_identifier@champion")
    first = container.download_blob(events[0]["subject"].split("/blobs/", 1)[1]).readall()
    raw = pd.read_csv(io.BytesIO(first)).drop(columns=["timestamp"]).head(300)
    assert len(model.predict(raw)) > 0


def _wait_for_blob_run(client: httpx.Client, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = client.get("/runs").json()["runs"]
        if runs:
            run: dict[str, Any] = runs[0]
            return run
        time.sleep(0.3)
    raise AssertionError(f"no run started within {timeout_s} s of the blob events")
