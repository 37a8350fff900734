"""Uploads to Azurite start runs through the blob-change poller, with no Event Grid anywhere:
the coordinator and the five workers as processes on the embedded bus and the Azure blob
adapter (a real Azurite), an upload through the Azure SDK as a data engineer's job would do
it. Each burst of uploads starts exactly one run.

The same run is the secrets check: the API token, the webhook secret, the storage connection
string and its account key, and the Application Insights connection string are configured,
and not one of them may appear in any log line, API answer or telemetry envelope.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from cli.main import prepare_state, stack_env, watch_run
from cli.stack import Stack, free_port
from recipes.state_identifier import recipe as state_identifier
from shared.blobs.port import BlobProperties
from shared.events import blob_created_event
from shared.settings import CommonSettings
from tests.appinsights_capture import running_capture
from tests.e2e.test_telemetry_stack import telemetry_env

# Six processes and two runs: generous on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CONTAINER = "uploads"
RULE_PREFIX = "machines/"
# Each a folder right below the rule's prefix: one data set, one run (docs: "Triggers").
BURSTS = ("machines/line-1", "machines/line-2")
API_TOKEN = "api-token-that-must-not-leak-" + "7" * 16
WEBHOOK_SECRET = "webhook-secret-that-must-not-leak-" + "9" * 16
DEBOUNCE_S = 2.0
POLL_S = 0.5


class Answers:
    """Every API answer the test got: status, headers and body, as the client saw them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def record(self, response: httpx.Response) -> None:
        response.read()
        self.seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")


def account_key(connection_string: str) -> str:
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    return parts["AccountKey"]


def test_each_burst_of_uploads_starts_one_run_and_no_secret_leaks(
    azurite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = tmp_path / "state"
    env = {
        "RETRAINER_STATE_DIR": str(state_dir),
        "RETRAINER_BLOB": "azure",
        "RETRAINER_BLOB_CONNECTION_STRING": azurite,
        "RETRAINER_BLOB_POLLER": "true",
        "RETRAINER_BLOB_POLLER_INTERVAL_S": str(POLL_S),
        "RETRAINER_TRIGGER_RULES": json.dumps(
            [{"container": CONTAINER, "prefix": RULE_PREFIX, "recipe": "state_identifier"}]
        ),
        "RETRAINER_TRIGGER_DEBOUNCE_S": str(DEBOUNCE_S),
        "RETRAINER_API_TOKEN": API_TOKEN,
        "RETRAINER_TRIGGER_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = CommonSettings()
    prepare_state(settings)
    sample = tmp_path / "sample"
    state_identifier.write_sample_data(sample, 5)
    files = sorted(sample.rglob("*.csv"))
    assert len(files) > 1, "a burst is several uploads"
    service = BlobServiceClient.from_connection_string(azurite)
    container = service.get_container_client(CONTAINER)
    answers = Answers()
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    with running_capture() as capture:
        telemetry = telemetry_env(capture)
        stack = Stack({**env, **stack_env(settings, port), **telemetry}, log_dir=state_dir / "logs")
        with stack:
            stack.wait_ready(url, timeout_s=300)
            # The poller's first look at the container sets its mark: uploads after it count.
            _wait_for_blob(service, "artifacts", f"blob-poller/{CONTAINER}.json")
            with httpx.Client(
                base_url=url, timeout=10.0, event_hooks={"response": [answers.record]}
            ) as anonymous:
                assert anonymous.get("/runs").status_code == 401
            with httpx.Client(
                base_url=url,
                timeout=10.0,
                headers={"Authorization": f"Bearer {API_TOKEN}"},
                event_hooks={"response": [answers.record]},
            ) as client:
                uploaded = {
                    burst: _upload_burst(container, sample, files, burst) for burst in BURSTS
                }
                runs = _wait_for_runs(client, len(BURSTS))
                finals = [
                    watch_run(client, run["id"], out=lambda _: None, poll_s=0.5, timeout_s=300)
                    for run in runs
                ]
                # Long enough for a second run of either burst to have started by now.
                time.sleep(DEBOUNCE_S + 4 * POLL_S)
                listed = client.get("/runs").json()
                # The webhook with its secret (in the query string, as Event Grid sends it)
                # and with a wrong one: the same upload again is a duplicate.
                event = blob_created_event(uploaded[BURSTS[0]])
                webhook = client.post("/events/blob", params={"code": WEBHOOK_SECRET}, json=[event])
                wrong = httpx.post(f"{url}/events/blob", params={"code": "nope"}, json=[event])
                answers.record(wrong)
                for run in runs:
                    client.get(f"/runs/{run['id']}")
        envelopes = capture.envelopes

    assert listed["total"] == len(BURSTS), listed
    assert sorted(run["data"] for run in listed["runs"]) == sorted(
        f"{CONTAINER}/{burst}" for burst in BURSTS
    )
    for final in finals:
        assert final["status"] == "succeeded", final
        assert final["trigger"] == "blob"
        assert final["trigger_details"]["events"] == len(files)
    assert webhook.status_code == 200 and webhook.json()["duplicates"] == 1, webhook.text
    assert wrong.status_code == 401

    secrets = {
        "API token": API_TOKEN,
        "webhook secret": WEBHOOK_SECRET,
        "storage connection string": azurite,
        "storage account key": account_key(azurite),
        "Application Insights connection string": telemetry[
            "APPLICATIONINSIGHTS_CONNECTION_STRING"
        ],
    }
    logs = {path.name: path.read_text(errors="replace") for path in (state_dir / "logs").glob("*")}
    assert set(logs) >= {"coordinator.log", "train.log"}
    assert sum(len(text.splitlines()) for text in logs.values()) > 20
    assert len(envelopes) > 20 and len(answers.seen) > 5
    leaks = [
        f"{what} in {where}"
        for what, secret in secrets.items()
        for where, text in [
            *logs.items(),
            *((f"API answer {i}", seen) for i, seen in enumerate(answers.seen)),
            *((f"envelope {i}", json.dumps(e)) for i, e in enumerate(envelopes)),
        ]
        if secret in text
    ]
    assert leaks == []


def _upload_burst(
    container: ContainerClient, sample: Path, files: list[Path], burst: str
) -> BlobProperties:
    first: BlobProperties | None = None
    for path in files:
        name = f"{burst}/{path.relative_to(sample).as_posix()}"
        container.upload_blob(name, path.read_bytes(), overwrite=True)
        if first is None:
            properties = container.get_blob_client(name).get_blob_properties()
            first = BlobProperties(
                f"{CONTAINER}/{name}",
                str(properties.etag).strip('"'),
                properties.size,
                properties.last_modified,
            )
    assert first is not None
    return first


def _wait_for_blob(service: BlobServiceClient, container: str, name: str) -> None:
    blob = service.get_blob_client(container, name)
    deadline = time.monotonic() + 60
    while not blob.exists():
        assert time.monotonic() < deadline, f"{container}/{name} never appeared"
        time.sleep(0.2)


def _wait_for_runs(client: httpx.Client, count: int, timeout_s: float = 90.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs: list[Any] = client.get("/runs").json()["runs"]
        if len(runs) >= count:
            return runs
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} runs started within {timeout_s} s of the uploads")


@pytest.fixture(autouse=True)
def _no_stale_container(azurite: str) -> Iterator[None]:
    """Azurite lives for the session: start from an empty container and no poller mark."""
    service = BlobServiceClient.from_connection_string(azurite)
    for container, prefix in ((CONTAINER, None), ("artifacts", "blob-poller/")):
        client = service.get_container_client(container)
        if client.exists():
            for blob in client.list_blobs(name_starts_with=prefix):
                client.delete_blob(blob.name)
    if not service.get_container_client(CONTAINER).exists():
        service.create_container(CONTAINER)
    yield
