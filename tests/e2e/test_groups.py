"""Run groups on the embedded process stack (what ``retrainer up`` runs): one state_identifier
model per species, each with its own champion; caches across groups; cancel; retry-failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import Stack, free_port
from shared.bootstrap import create_blob_store, create_registry
from shared.settings import CommonSettings

# Start-up (every recipe imported) and two groups of three trainings on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

SPECIES = ("cygnus-buccinator", "cygnus-olor", "anser-anser")
PREFIX = "datasets/species-e2e"
GROUP_TIMEOUT_S = 600
# A loaded machine may take minutes to import every recipe's libraries at start-up.
READY_TIMEOUT_S = 300


class Deployment:
    def __init__(self, client: httpx.Client, settings: CommonSettings) -> None:
        self.client = client
        self.settings = settings

    def start(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/run-groups", json={"recipe": "state_identifier", **body})
        assert response.status_code == 202, response.text
        group: dict[str, Any] = response.json()
        return group

    def group(self, group_id: str) -> dict[str, Any]:
        group: dict[str, Any] = self.client.get(f"/run-groups/{group_id}").json()
        return group

    def wait(self, group_id: str, *, until: Any = None) -> dict[str, Any]:
        """Poll the group until ``until(group)`` (default: it finished)."""
        deadline = time.monotonic() + GROUP_TIMEOUT_S
        done = until or (lambda g: g["status"] != "running")
        while time.monotonic() < deadline:
            group = self.group(group_id)
            if done(group):
                return group
            time.sleep(0.5)
        raise AssertionError(f"group {group_id} stayed {self.group(group_id)['counts']}")

    def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.client.get(f"/runs/{run_id}").json()
        return run


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    state_dir = tmp_path_factory.mktemp("groups-state")
    monkeypatch_module.setenv("RETRAINER_STATE_DIR", str(state_dir))
    settings = CommonSettings()
    for seed, species in enumerate(SPECIES):
        upload_sample_data(settings, "state_identifier", f"{PREFIX}/{species}", seed=seed)
    prepare_state(settings)
    port = free_port()
    env = {
        **stack_env(settings, port),
        "RETRAINER_GROUP_DEFAULT_CONCURRENCY": "2",
        "RETRAINER_CODE_VERSION": "e2e-groups",
    }
    stack = Stack(env, log_dir=state_dir / "logs")
    stack.start()
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_ready(url, timeout_s=READY_TIMEOUT_S)
        with httpx.Client(base_url=url, timeout=30.0) as client:
            yield Deployment(client, settings)
    finally:
        stack.stop()


def by_entity(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {member["entity"]: member for member in group["member_runs"]}


def test_a_group_of_three_species_ends_with_three_models_each_with_its_champion(
    deployment: Deployment,
) -> None:
    group = deployment.start(expand={"kind": "sub_prefixes", "prefix": PREFIX})
    assert group["members"] == 3
    final = deployment.wait(group["id"])

    assert final["status"] == "succeeded", final
    members = by_entity(final)
    names = {entity: member["model"]["name"] for entity, member in members.items()}
    assert names == {species: f"state_identifier.{species}" for species in SPECIES}
    registry = create_registry(deployment.settings)
    for species in SPECIES:
        member = members[species]
        assert member["model"]["champion"] is True, member
        champion = registry.get_champion(names[species])
        assert champion is not None
        assert champion.version == member["model"]["version"]
        assert champion.tags["entity"] == species
        assert champion.tags["correlation_id"] == member["run_id"]

    # The second group on unchanged data: every recipe stage from the caches, nothing promoted.
    again = deployment.wait(
        deployment.start(expand={"kind": "sub_prefixes", "prefix": PREFIX})["id"]
    )
    assert again["status"] == "succeeded", again
    for member in again["member_runs"]:
        run = deployment.run(member["run_id"])
        cached = {stage["name"]: stage["cached"] for stage in run["stages"]}
        assert cached["aggregation"] and cached["split"] and cached["train"], cached
        assert member["model"]["champion"] is False, member
        champion = registry.get_champion(member["model"]["name"])
        assert (
            champion is not None
            and champion.version == members[member["entity"]]["model"]["version"]
        ), "the first group's models stay champions"


def test_cancelling_a_group_midway_leaves_no_member_running(deployment: Deployment) -> None:
    # Forced, so the members really run instead of finishing from the caches.
    group = deployment.start(
        expand={"kind": "sub_prefixes", "prefix": PREFIX}, concurrency=1, force=True
    )
    deployment.wait(group["id"], until=lambda g: g["counts"].get("running"))

    response = deployment.client.post(f"/run-groups/{group['id']}/cancel")

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    time.sleep(3)  # whatever the workers still report changes nothing
    after = deployment.group(group["id"])
    assert set(after["counts"]) <= {"succeeded", "cancelled"}, after["counts"]
    assert after["counts"].get("cancelled", 0) >= 2


def test_a_member_that_fails_is_retried_alone(deployment: Deployment) -> None:
    store = create_blob_store(deployment.settings.model_copy(update={"blob_events": False}))
    bad = "datasets/species-e2e-bad/anas-crecca/readings.csv"
    store.upload_blob(bad, b"timestamp,s1\n2025-01-01T00:00:00Z,not-a-number\n")
    members = [
        {"entity": "cygnus-olor", "data": f"{PREFIX}/cygnus-olor"},
        {"entity": "anas-crecca", "data": "datasets/species-e2e-bad/anas-crecca"},
    ]
    group = deployment.start(members=members)
    failed = deployment.wait(group["id"])
    assert failed["status"] == "failed", failed
    before = by_entity(failed)
    assert before["anas-crecca"]["status"] == "failed"
    assert "readings.csv" in (before["anas-crecca"]["error"] or "")
    assert before["cygnus-olor"]["status"] == "succeeded"

    store.delete_blob(bad)
    upload_sample_data(
        deployment.settings, "state_identifier", "datasets/species-e2e-bad/anas-crecca", seed=9
    )
    response = deployment.client.post(f"/run-groups/{group['id']}/retry-failed")
    assert response.status_code == 202, response.text
    retried = deployment.wait(group["id"])

    assert retried["status"] == "succeeded", retried
    after = by_entity(retried)
    assert after["cygnus-olor"] == before["cygnus-olor"], "the member that succeeded is untouched"
    assert after["anas-crecca"]["run_id"] == before["anas-crecca"]["run_id"]
    assert after["anas-crecca"]["model"]["name"] == "state_identifier.anas-crecca"
