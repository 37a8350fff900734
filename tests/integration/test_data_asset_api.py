"""``POST /runs`` and run-group members on a data-asset version (``asset:<name>@<version|latest>``):
validated (an unknown asset or version is a 422 naming it), pinned, aggregation and split
skipped, train queued on the version's split; the run's view names the version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.service import Coordinator
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.data_assets.local import LocalDataAssets
from shared.messages import RunStage, decode
from shared.recipe_registry import get_recipe
from shared.topology import WORKER_SUBSCRIPTION, build_topology, command_topic

ASSET = "state_identifier-training-data"


@pytest.fixture
def api(
    tmp_path: Path,
) -> Iterator[tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator]]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    assets = LocalDataAssets(blobs)
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        data_assets=assets,
    )
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())
    with TestClient(create_app(coordinator=coordinator, run_loops=False)) as client:
        yield client, assets, bus, coordinator
    coordinator.close()
    bus.close()


def test_a_run_on_a_version_skips_to_train_and_shows_the_version(
    api: tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator],
) -> None:
    client, assets, bus, coordinator = api
    assets.register(ASSET, "artifacts/cache/split/v1", correlation_id="r1")
    assets.register(ASSET, "artifacts/cache/split/v2", correlation_id="r2")
    body = {
        "recipe": "state_identifier",
        "data": f"asset:{ASSET}@latest",
        "correlation_id": str(uuid4()),
    }

    response = client.post("/runs", json=body)
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["data"] == f"asset:{ASSET}@latest"
    assert run["data_asset"] == {
        "name": ASSET,
        "version": "2",
        "reference": f"asset:{ASSET}@2",
    }
    assert [s["status"] for s in run["stages"]] == [
        "skipped",
        "skipped",
        "queued",
        "pending",
        "pending",
    ]
    assert run["outputs"] == {"split": "artifacts/cache/split/v2"}
    assert client.get("/runs").json()["runs"][0]["data_asset"]["version"] == "2"

    # A version registered meanwhile does not move it; asking again is the same run.
    assets.register(ASSET, "artifacts/cache/split/v3", correlation_id="r3")
    again = client.post("/runs", json=body)
    assert again.status_code == 200
    assert again.json()["data_asset"]["version"] == "2"

    coordinator.relay_outbox()
    received = bus.receive_messages(command_topic("train"), WORKER_SUBSCRIPTION, max_wait_time=1)
    [command] = [decode(m.body, m.application_properties) for m in received]
    assert isinstance(command, RunStage)
    assert command.inputs["split"] == "artifacts/cache/split/v2"
    assert command.inputs["data_asset"] == f"{ASSET}@2"
    assert bus.receive_messages(command_topic("aggregation"), WORKER_SUBSCRIPTION) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("asset:nope@latest", "data asset 'nope' has no versions"),
        (f"asset:{ASSET}@9", f"data asset '{ASSET}' has no version 9"),
        (f"asset:{ASSET}@v9", "is not 'latest' or a version number"),
        ("asset:@1", "is not valid"),
    ],
)
def test_an_unknown_or_malformed_reference_is_a_422_naming_it(
    api: tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator],
    data: str,
    message: str,
) -> None:
    client, assets, _, _ = api
    assets.register(ASSET, "artifacts/cache/split/v1", correlation_id="r1")
    response = client.post("/runs", json={"recipe": "state_identifier", "data": data})
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "data"]
    assert message in problem["msg"]


def test_the_versions_of_an_asset_are_listed(
    api: tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator],
) -> None:
    client, assets, _, _ = api
    assets.register(ASSET, "artifacts/cache/split/v1", correlation_id="r1")
    assets.register(ASSET, "artifacts/cache/split/v2", correlation_id="r2")
    listed = client.get(f"/data-assets/{ASSET}")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert (body["name"], body["latest"]) == (ASSET, "2")
    assert [
        (v["version"], v["reference"], v["prefix"], v["correlation_id"]) for v in body["versions"]
    ] == [
        ("1", f"asset:{ASSET}@1", "artifacts/cache/split/v1/", "r1"),
        ("2", f"asset:{ASSET}@2", "artifacts/cache/split/v2/", "r2"),
    ]
    assert client.get("/data-assets/nope").status_code == 404
    assert client.get("/data-assets/bad%20name").status_code == 422


def test_group_members_train_on_data_asset_versions_each_pinned_at_creation(
    api: tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator],
) -> None:
    client, assets, bus, coordinator = api
    assets.register(ASSET, "artifacts/cache/split/v1", correlation_id="r1")
    assets.register(ASSET, "artifacts/cache/split/v2", correlation_id="r2")
    coordinator.blobs.upload_blob("datasets/plain/part-1.csv", b"timestamp,a\n1,2\n")
    body = {
        "recipe": "state_identifier",
        "members": [
            {"entity": "on-latest", "data": f"asset:{ASSET}@latest"},
            {"entity": "on-one", "data": f"asset:{ASSET}@1"},
            {"entity": "also-latest", "data": f"asset:{ASSET}@latest"},
            {"entity": "on-blobs", "data": "datasets/plain"},
        ],
        "concurrency": 4,
    }

    response = client.post("/run-groups", json=body)
    assert response.status_code == 202, response.text
    # Registered after the group was created: no member moves to it.
    assets.register(ASSET, "artifacts/cache/split/v3", correlation_id="r3")
    members = {m["entity"]: m for m in response.json()["member_runs"]}
    runs = {entity: client.get(f"/runs/{m['run_id']}").json() for entity, m in members.items()}
    versions = {
        entity: run["data_asset"] and run["data_asset"]["version"] for entity, run in runs.items()
    }
    assert versions == {"on-latest": "2", "on-one": "1", "also-latest": "2", "on-blobs": None}
    assert [s["status"] for s in runs["on-one"]["stages"]][:3] == ["skipped", "skipped", "queued"]
    assert members["on-latest"]["data"] == f"asset:{ASSET}@latest"

    coordinator.relay_outbox()
    received = bus.receive_messages(
        command_topic("train"), WORKER_SUBSCRIPTION, max_message_count=10, max_wait_time=1
    )
    trains = [decode(m.body, m.application_properties) for m in received]
    assert all(isinstance(command, RunStage) for command in trains)
    assert sorted(c.inputs["split"] for c in trains if isinstance(c, RunStage)) == [
        "artifacts/cache/split/v1",
        "artifacts/cache/split/v2",
        "artifacts/cache/split/v2",
    ]
    received = bus.receive_messages(
        command_topic("aggregation"), WORKER_SUBSCRIPTION, max_message_count=10, max_wait_time=1
    )
    [aggregation] = [decode(m.body, m.application_properties) for m in received]
    assert isinstance(aggregation, RunStage)
    assert aggregation.correlation_id == UUID(members["on-blobs"]["run_id"])


def test_a_group_on_an_unknown_version_is_a_422_naming_each_member_and_starts_nothing(
    api: tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator],
) -> None:
    client, assets, _, coordinator = api
    assets.register(ASSET, "artifacts/cache/split/v1", correlation_id="r1")
    body = {
        "recipe": "state_identifier",
        "members": [
            {"entity": "fine", "data": f"asset:{ASSET}@1"},
            {"entity": "no-version", "data": f"asset:{ASSET}@9"},
            {"entity": "no-asset", "data": "asset:nope@latest"},
        ],
    }
    response = client.post("/run-groups", json=body)
    assert response.status_code == 422, response.text
    problems = {tuple(p["loc"]): p["msg"] for p in response.json()["detail"]}
    assert problems == {
        ("body", "members", 1, "data"): f"data asset '{ASSET}' has no version 9",
        ("body", "members", 2, "data"): "data asset 'nope' has no versions",
    }
    assert client.get("/run-groups").json()["total"] == 0
    assert client.get("/runs").json()["total"] == 0
    assert coordinator.relay_outbox() == 0


def test_a_csv_of_entities_can_name_a_data_asset_per_entity(
    api: tuple[TestClient, LocalDataAssets, SqliteMessageBus, Coordinator],
) -> None:
    client, assets, _, coordinator = api
    for entity in ("sp-a", "sp-b"):
        assets.register(f"{entity}-data", f"artifacts/cache/split/{entity}", correlation_id=entity)
    coordinator.blobs.upload_blob("datasets/species.csv", b"species\nsp-a\nsp-b\n")
    response = client.post(
        "/run-groups",
        json={
            "recipe": "state_identifier",
            "expand": {
                "kind": "csv_rows",
                "blob": "datasets/species.csv",
                "entity_column": "species",
                "data_template": "asset:{entity}-data@latest",
            },
        },
    )
    assert response.status_code == 202, response.text
    runs = [client.get(f"/runs/{m['run_id']}").json() for m in response.json()["member_runs"]]
    assert [(run["entity"], run["data_asset"]["name"]) for run in runs] == [
        ("sp-a", "sp-a-data"),
        ("sp-b", "sp-b-data"),
    ]
