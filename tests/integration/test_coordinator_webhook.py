"""The Event Grid webhook, POST/OPTIONS /events/blob, over the real stores and bus."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.service import Coordinator, TriggerPolicy
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.events import blob_created_event
from shared.recipe_registry import get_recipe
from shared.topology import build_topology
from shared.triggers import TriggerRule
from tests.clock import Clock
from tests.entra import FakeTenant, serving_tenant

SECRET = "s3cret-key"
MAX_BYTES = 8 * 1024
RULES = (
    TriggerRule(container="datasets", prefix="state-identifier/", recipe="state_identifier"),
    TriggerRule(container="labels", prefix="state/", recipe="state_identifier", marker="_READY"),
)


@dataclass
class Hook:
    client: TestClient
    coordinator: Coordinator
    blobs: LocalBlobStore
    clock: Clock

    def post(
        self, body: Any, *, key: str | None = SECRET, content_type: str = "application/json"
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        params = {"code": key} if key is not None else {}
        return self.client.post(
            "/events/blob", content=content, params=params, headers={"content-type": content_type}
        )

    def upload(self, name: str) -> dict[str, Any]:
        return blob_created_event(self.blobs.upload_blob(name, b"timestamp,a\n1,2\n"))

    def nothing_started(self) -> bool:
        return (
            self.coordinator.store.count_runs() == 0
            and self.coordinator.store.pending_bursts() == []
        )


def make_hook(tmp_path: Path, **settings: Any) -> Iterator[Hook]:
    clock = Clock()
    blobs = LocalBlobStore(tmp_path / "blobs")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        triggers=TriggerPolicy(rules=RULES, debounce_s=5.0),
        clock=clock,
    )
    app = create_app(
        CoordinatorSettings(state_dir=tmp_path, trigger_webhook_max_bytes=MAX_BYTES, **settings),
        coordinator=coordinator,
        run_loops=False,
    )
    with TestClient(app) as client:
        yield Hook(client, coordinator, blobs, clock)
    coordinator.close()


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Hook]:
    yield from make_hook(tmp_path, trigger_webhook_secret=SECRET)


def cloud(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event["id"],
        "source": event["topic"],
        "type": event["eventType"],
        "subject": event["subject"],
        "time": event["eventTime"],
        "data": event["data"],
    }


# --- handshakes --------------------------------------------------------------------------


def test_the_event_grid_validation_event_is_answered_with_its_code(hook: Hook) -> None:
    validation = {
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/x",
        "subject": "",
        "data": {
            "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net/api/validate?id=x",
        },
        "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime": "2025-03-01T12:00:00.000Z",
        "metadataVersion": "1",
        "dataVersion": "1",
    }

    response = hook.post([validation])

    assert response.status_code == 200
    assert response.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert hook.post([validation], key=None).status_code == 401


def test_the_cloudevents_options_handshake_allows_the_origin(hook: Hook) -> None:
    response = hook.client.options(
        "/events/blob", headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )

    assert response.status_code == 200
    assert response.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert response.headers["WebHook-Allowed-Rate"] == "*"
    missing = hook.client.options("/events/blob")
    assert missing.status_code == 400
    assert "WebHook-Request-Origin" in missing.json()["detail"]


# --- the key -----------------------------------------------------------------------------


def test_the_key_is_required_as_code_or_header_when_configured(hook: Hook) -> None:
    event = hook.upload("datasets/state-identifier/k/a.csv")

    missing = hook.post([event], key=None)
    wrong = hook.post([event], key="s3cret-kex")
    header = hook.client.post(
        "/events/blob", json=[event], headers={"aeg-sas-key": "not-it"}
    ).status_code

    assert (missing.status_code, wrong.status_code, header) == (401, 401, 401)
    assert "?code=" in missing.json()["detail"]
    assert hook.nothing_started()
    assert hook.post([event]).status_code == 200
    by_header = hook.client.post(
        "/events/blob",
        json=[hook.upload("datasets/state-identifier/k/b.csv")],
        headers={"aeg-sas-key": SECRET},
    )
    assert by_header.status_code == 200
    assert by_header.json()["accepted"] == 1


def test_without_a_configured_key_every_caller_is_accepted(tmp_path: Path) -> None:
    for open_hook in make_hook(tmp_path):
        event = open_hook.upload("datasets/state-identifier/k/a.csv")
        assert open_hook.post([event], key=None).status_code == 200


# --- deliveries --------------------------------------------------------------------------


def test_a_batch_is_recorded_and_its_run_starts_after_the_window(hook: Hook) -> None:
    events = [hook.upload(f"datasets/state-identifier/w/part-{i}.csv") for i in range(3)]

    response = hook.post(events)

    assert response.status_code == 200
    assert response.json() == {
        "received": 3,
        "accepted": 3,
        "duplicates": 0,
        "ignored": 0,
        "runs_started": [],
    }
    hook.clock.now += timedelta(seconds=5)
    hook.coordinator.trigger_tick()
    [summary] = hook.client.get("/runs").json()["runs"]
    run = hook.client.get(f"/runs/{summary['id']}").json()
    assert (run["trigger"], run["data"]) == ("blob", "datasets/state-identifier/w")
    details = run["trigger_details"]
    assert details["events"] == 3
    assert details["first"]["blob"] == "datasets/state-identifier/w/part-0.csv"
    assert details["first"]["event_id"] == events[0]["id"]
    assert details["last"]["blob"] == "datasets/state-identifier/w/part-2.csv"


def test_a_redelivered_batch_counts_as_duplicates(hook: Hook) -> None:
    events = [hook.upload("datasets/state-identifier/w/a.csv")]
    assert hook.post(events).json()["accepted"] == 1

    again = hook.post(events)

    assert again.status_code == 200
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 1)


@pytest.mark.parametrize(
    ("content_type", "batch"),
    [
        ("application/cloudevents+json; charset=utf-8", False),
        ("application/cloudevents-batch+json; charset=utf-8", True),
    ],
)
def test_cloudevents_are_accepted_single_and_batched(
    hook: Hook, content_type: str, batch: bool
) -> None:
    event = cloud(hook.upload("labels/state/b1/_READY"))

    response = hook.post([event] if batch else event, content_type=content_type)

    assert response.status_code == 200, response.text
    [run_id] = response.json()["runs_started"]  # a marker starts its run at once
    run = hook.client.get(f"/runs/{run_id}").json()
    assert (run["trigger"], run["data"], run["status"]) == ("blob", "labels/state/b1", "queued")
    assert run["stages"][0]["status"] == "queued"


def test_events_for_unknown_containers_and_other_types_are_ignored(hook: Hook) -> None:
    deleted = {
        **hook.upload("datasets/state-identifier/x/a.csv"),
        "id": "d1",
        "eventType": "Microsoft.Storage.BlobDeleted",
    }

    response = hook.post([hook.upload("unknown/x/a.csv"), deleted])

    assert response.status_code == 200
    assert (response.json()["ignored"], response.json()["accepted"]) == (2, 0)
    assert hook.nothing_started()


# --- refused -----------------------------------------------------------------------------


def test_a_malformed_event_refuses_the_whole_batch_naming_the_problem(hook: Hook) -> None:
    good = hook.upload("datasets/state-identifier/m/a.csv")
    bad = {**hook.upload("datasets/state-identifier/m/b.csv"), "id": "bad-one"}
    bad["data"] = {**bad["data"], "contentLength": "big"}

    response = hook.post([good, bad])

    assert response.status_code == 400
    assert response.json()["detail"] == (
        "event [1] (id 'bad-one'): data.contentLength is not a non-negative integer: 'big'"
    )
    assert hook.nothing_started()


@pytest.mark.parametrize("body", [b"{not json", b"", b"\x00\x01"])
def test_a_body_that_is_not_json_is_400(hook: Hook, body: bytes) -> None:
    response = hook.post(body)
    assert response.status_code == 400
    assert "not JSON" in response.json()["detail"]


def test_a_wrong_content_type_is_415(hook: Hook) -> None:
    response = hook.post(
        [hook.upload("datasets/state-identifier/c/a.csv")], content_type="text/xml"
    )
    assert response.status_code == 415
    assert "text/xml" in response.json()["detail"]
    assert hook.nothing_started()


def test_an_oversized_body_is_413_by_its_length_or_while_read(hook: Hook) -> None:
    big = json.dumps([{"padding": "x" * MAX_BYTES}]).encode()

    declared = hook.post(big)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the limit is passed
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    streamed = hook.client.post(
        "/events/blob",
        content=chunks(),
        params={"code": SECRET},
        headers={"content-type": "application/json"},
    )

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert str(MAX_BYTES) in declared.json()["detail"]
    assert hook.nothing_started()


def test_the_webhook_is_in_the_openapi_document(hook: Hook) -> None:
    paths = hook.client.get("/openapi.json").json()["paths"]
    assert {"post", "options"} <= set(paths["/events/blob"])


# --- Event Grid's Microsoft Entra-authenticated delivery ---------------------------------


@pytest.fixture
def tenant() -> Iterator[FakeTenant]:
    with serving_tenant() as running:
        yield running


@pytest.fixture
def entra_hook(tmp_path: Path, tenant: FakeTenant) -> Iterator[Hook]:
    yield from make_hook(
        tmp_path,
        trigger_webhook_secret=SECRET,
        auth_tenant_id=tenant.tenant_id,
        auth_audience=tenant.audience,
        auth_jwks_url=tenant.jwks_url,
    )


def test_event_grid_entra_delivery_is_accepted_beside_the_shared_secret(
    entra_hook: Hook, tenant: FakeTenant
) -> None:
    first = entra_hook.upload("datasets/state-identifier/2025-03-01/a.csv")
    second = entra_hook.upload("datasets/state-identifier/2025-03-01/b.csv")

    def post(event: dict[str, Any], token: str | None) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return entra_hook.client.post("/events/blob", content=json.dumps([event]), headers=headers)

    event_grid = tenant.token(["AzureEventGridSecureWebhookSubscriber"])
    assert post(first, None).status_code == 401
    # A valid token, but not Event Grid's role; a token for another audience.
    assert post(first, tenant.token(["runs.read"])).status_code == 401
    wrong_audience = tenant.token(["AzureEventGridSecureWebhookSubscriber"], audience="api://x")
    assert post(first, wrong_audience).status_code == 401
    assert entra_hook.nothing_started()

    accepted = post(first, event_grid)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["accepted"] == 1
    # The shared secret still works.
    assert entra_hook.post([second]).json()["accepted"] == 1
