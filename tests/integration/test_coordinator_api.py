"""The REST API over the real SQLite bus, local blob store and SQLite run store."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

import cli.main as cli
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.service import Coordinator
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import (
    STAGES,
    CancelStage,
    RunStage,
    Stage,
    StageStarted,
    StageSucceeded,
    decode,
    encode,
)
from shared.recipe_registry import get_recipe
from shared.topology import (
    CONTROL_TOPIC,
    EVENTS_TOPIC,
    TRAIN_SUBSCRIPTION,
    WORKER_SUBSCRIPTION,
    build_topology,
    command_topic,
)

STAGE_OUTPUTS: dict[Stage, dict[str, str]] = {
    "aggregation": {"dataset": "artifacts/cache/aggregation/abc"},
    "split": {"split": "artifacts/cache/split/def"},
    "train": {"training": "artifacts/cache/train/123"},
    "register": {"registration": "artifacts/runs/r/register"},
    "tag": {"promotion": "artifacts/runs/r/tag"},
}
STAGE_DETAILS: dict[Stage, dict[str, Any]] = {
    "register": {"model_name": "state_identifier", "model_version": "4"},
    "tag": {"model_name": "state_identifier", "promoted": True, "reason": "beats champion v3"},
}


@dataclass
class Stack:
    client: TestClient
    coordinator: Coordinator
    bus: SqliteMessageBus

    def start(self, **overrides: Any) -> dict[str, Any]:
        body = {"recipe": "state_identifier", "data": "raw/set1", "params": {"n_clusters": 3}}
        response = self.client.post("/runs", json={**body, **overrides})
        assert response.status_code == 202, response.text
        run: dict[str, Any] = response.json()
        return run

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    def worker_receives(self, stage: Stage, wait_s: float = 0.5) -> list[RunStage]:
        received = self.bus.receive_messages(
            command_topic(stage), WORKER_SUBSCRIPTION, max_message_count=10, max_wait_time=wait_s
        )
        commands = []
        for message in received:
            self.bus.complete_message(message)
            command = decode(message.body, message.application_properties)
            assert isinstance(command, RunStage)
            commands.append(command)
        return commands

    def report(self, *events: StageStarted | StageSucceeded) -> None:
        self.bus.send_messages(EVENTS_TOPIC, [encode(event) for event in events])
        while self.coordinator.consume_events(max_wait_s=0.1):
            pass


def make_coordinator(tmp_path: Path) -> Coordinator:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.upload_blob("raw/set1/part-1.csv", b"timestamp,a\n1,2\n")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    return Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    coordinator = make_coordinator(tmp_path)
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())
    with TestClient(create_app(coordinator=coordinator, run_loops=False)) as client:
        yield Stack(client, coordinator, bus)
    coordinator.close()
    bus.close()


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("coordinator-")]


def succeeded(run_id: UUID, stage: Stage, attempt: int = 1) -> StageSucceeded:
    return StageSucceeded(
        correlation_id=run_id,
        stage=stage,
        attempt=attempt,
        outputs=STAGE_OUTPUTS[stage],
        metrics={"silhouette": 0.42} if stage == "train" else {},
        details=STAGE_DETAILS.get(stage, {}),
        cached=stage == "aggregation",
        duration_s=0.25,
    )


# --- starting a run ----------------------------------------------------------------------


def test_post_runs_accepts_the_run_and_sends_the_first_command(stack: Stack) -> None:
    response = stack.client.post(
        "/runs",
        json={"recipe": "state_identifier", "data": "raw/set1", "params": {"n_clusters": 4}},
    )

    assert response.status_code == 202
    run = response.json()
    assert response.headers["location"] == f"/runs/{run['id']}"
    assert run["correlation_id"] == run["id"]
    assert (run["status"], run["recipe"], run["data"]) == ("queued", "state_identifier", "raw/set1")
    assert run["params"] == {"n_clusters": 4}
    assert [(s["name"], s["status"], s["attempt"]) for s in run["stages"]] == [
        ("aggregation", "queued", 1),
        ("split", "pending", 0),
        ("train", "pending", 0),
        ("register", "pending", 0),
        ("tag", "pending", 0),
    ]
    assert stack.coordinator.relay_outbox() == 1
    [command] = stack.worker_receives("aggregation")
    assert command.correlation_id == UUID(run["id"])
    assert (command.stage, command.attempt, command.recipe) == (
        "aggregation",
        1,
        "state_identifier",
    )
    assert command.inputs == {"data": "raw/set1"}
    assert command.params == {"n_clusters": 4}


def test_stage_events_on_the_bus_move_the_run_through_all_five_stages(stack: Stack) -> None:
    run_id = UUID(stack.start()["id"])
    expected_inputs = {"data": "raw/set1"}

    for stage in STAGES:
        stack.coordinator.relay_outbox()
        [command] = stack.worker_receives(stage)
        assert command.inputs == expected_inputs
        stack.report(StageStarted(correlation_id=run_id, stage=stage, attempt=1, worker="w1"))
        assert stack.run(str(run_id))["status"] == "running"
        stack.report(succeeded(run_id, stage))
        expected_inputs = {**expected_inputs, **STAGE_OUTPUTS[stage]}

    run = stack.run(str(run_id))
    assert run["status"] == "succeeded"
    assert run["error"] is None
    assert run["finished_at"] is not None
    assert run["metrics"] == {"silhouette": 0.42}
    assert run["model"] == {
        "name": "state_identifier",
        "version": "4",
        "champion": True,
        "reason": "beats champion v3",
    }
    assert run["outputs"] == {
        k: v for outputs in STAGE_OUTPUTS.values() for k, v in outputs.items()
    }
    aggregation = run["stages"][0]
    assert aggregation["status"] == "succeeded"
    assert aggregation["cached"] is True
    assert aggregation["worker"] == "w1"
    assert aggregation["duration_s"] is not None and aggregation["duration_s"] >= 0
    assert [a["outcome"] for a in aggregation["attempts"]] == ["succeeded"]
    assert stack.coordinator.relay_outbox() == 0


# --- refused requests --------------------------------------------------------------------


def test_unknown_recipe_is_refused_naming_it_and_the_known_ones(stack: Stack) -> None:
    response = stack.client.post("/runs", json={"recipe": "nope", "data": "raw/set1"})

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "recipe"]
    assert "unknown recipe 'nope'" in problem["msg"]
    assert "state_identifier" in problem["msg"]
    assert stack.client.get("/runs").json()["total"] == 0


def test_invalid_params_are_refused_naming_each_param(stack: Stack) -> None:
    response = stack.client.post(
        "/runs",
        json={
            "recipe": "state_identifier",
            "data": "raw/set1",
            "params": {"n_clusters": 1, "bogus": True},
        },
    )

    assert response.status_code == 422
    problems = {tuple(p["loc"]): p["msg"] for p in response.json()["detail"]}
    assert set(problems) == {("body", "params", "n_clusters"), ("body", "params", "bogus")}
    assert "greater than or equal to 2" in problems[("body", "params", "n_clusters")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("Not A Container/x", "prefix must start with a valid container name"),
        ("raw/../etc", "'.' or '..' path segment"),
        ("raw/missing", "no blobs in the folder 'raw/missing/'"),
        # A string prefix of raw/set1/: the workers would read raw/set/, which is empty.
        ("raw/set", "no blobs in the folder 'raw/set/'"),
        ("artifacts/cache", "'artifacts' holds the workers' own outputs, not data"),
    ],
)
def test_unusable_data_is_refused(stack: Stack, data: str, message: str) -> None:
    response = stack.client.post("/runs", json={"recipe": "state_identifier", "data": data})

    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "data"]
    assert message in problem["msg"]


def test_data_is_a_folder_with_or_without_its_slash(stack: Stack) -> None:
    assert stack.start(data="raw/set1")["data"] == "raw/set1"
    assert stack.start(data="raw/set1/")["data"] == "raw/set1/"
    assert stack.start(data="raw")["data"] == "raw"


def test_a_request_without_a_recipe_is_refused(stack: Stack) -> None:
    response = stack.client.post("/runs", json={"data": "raw/set1"})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "recipe"]


# --- reading runs ------------------------------------------------------------------------


def test_get_of_an_unknown_run_is_404(stack: Stack) -> None:
    response = stack.client.get(f"/runs/{uuid4()}")

    assert response.status_code == 404
    assert "not found" in response.json()["detail"]
    assert stack.client.get("/runs/not-a-uuid").status_code == 422


def test_list_runs_filters_and_pages_newest_first(stack: Stack) -> None:
    ids = [stack.start()["id"] for _ in range(3)]
    stack.client.post(f"/runs/{ids[0]}/cancel")

    page = stack.client.get("/runs", params={"limit": 2}).json()
    assert [r["id"] for r in page["runs"]] == [ids[2], ids[1]]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 0)
    assert [r["id"] for r in stack.client.get("/runs", params={"offset": 2}).json()["runs"]] == [
        ids[0]
    ]
    cancelled = stack.client.get("/runs", params={"status": "cancelled"}).json()
    assert [(r["id"], r["status"], r["stage"]) for r in cancelled["runs"]] == [
        (ids[0], "cancelled", "aggregation")
    ]
    assert stack.client.get("/runs", params={"status": "bogus"}).status_code == 422


# --- cancel and retry --------------------------------------------------------------------


def test_cancel_then_retry_requeues_the_stage_with_a_new_attempt(stack: Stack) -> None:
    run_id = stack.start()["id"]
    stack.coordinator.relay_outbox()
    stack.worker_receives("aggregation")

    cancelled = stack.client.post(f"/runs/{run_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["stages"][0]["status"] == "cancelled"
    assert stack.client.post(f"/runs/{run_id}/cancel").status_code == 409
    # The stage's worker (the train service, for outside compute) is told to stop.
    stack.coordinator.relay_outbox()
    [stop] = stack.bus.receive_messages(CONTROL_TOPIC, TRAIN_SUBSCRIPTION, max_wait_time=0.5)
    request = decode(stop.body, stop.application_properties)
    assert isinstance(request, CancelStage)
    assert (str(request.correlation_id), request.stage, request.attempt) == (
        run_id,
        "aggregation",
        1,
    )

    retried = stack.client.post(f"/runs/{run_id}/retry")
    assert retried.status_code == 202
    assert retried.json()["status"] == "running"
    assert retried.json()["stages"][0]["attempt"] == 2
    stack.coordinator.relay_outbox()
    [command] = stack.worker_receives("aggregation")
    assert command.attempt == 2

    refused = stack.client.post(f"/runs/{run_id}/retry")
    assert refused.status_code == 409
    assert "it is running" in refused.json()["detail"]


def test_the_cli_cancels_and_retries_through_the_api(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI's HTTP client is the app's own test client (not closed by the command).
    monkeypatch.setattr(cli, "_client", lambda _args: contextlib.nullcontext(stack.client))
    run_id = stack.start()["id"]

    assert cli.main(["runs", "cancel", run_id]) == 0
    assert "cancelled" in capsys.readouterr().out
    assert stack.run(run_id)["status"] == "cancelled"
    assert cli.main(["runs", "cancel", run_id]) == 2
    assert "HTTP 409" in capsys.readouterr().err

    assert cli.main(["runs", "retry", run_id]) == 0
    assert stack.run(run_id)["stages"][0]["attempt"] == 2
    assert cli.main(["runs", "retry", str(uuid4())]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def test_the_cli_takes_the_short_ids_it_prints(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_client", lambda _args: contextlib.nullcontext(stack.client))
    ids = [
        "abcd1234-0000-4000-8000-000000000001",
        "abcd1234-0000-4000-8000-000000000002",
        "abcd9999-0000-4000-8000-000000000003",
    ]
    for run_id in ids:
        stack.start(correlation_id=run_id)
    capsys.readouterr()

    assert cli.main(["runs", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "RECIPE", "TRIGGER", "CREATED", "MODEL"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["abcd1234", "abcd1234", "abcd9999"]
    assert all(line.split()[3] == "api" for line in lines[1:]), "the trigger column"

    # A unique prefix (the printed short id, any case, dashes or not) is the run.
    assert cli.main(["runs", "show", "ABCD9999"]) == 0
    assert ids[2] in capsys.readouterr().out
    assert cli.main(["runs", "cancel", "abcd1234-0000-4000-8000-00000000000"[:-1] + "02"]) == 0
    assert stack.run(ids[1])["status"] == "cancelled"

    # An ambiguous one names the candidates; an unknown or malformed one says so.
    assert cli.main(["runs", "show", "abcd1234"]) == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and ids[0] in err and ids[1] in err and ids[2] not in err
    assert cli.main(["runs", "show", "ffff"]) == 2
    assert "no run id starts with ffff" in capsys.readouterr().err
    assert cli.main(["runs", "show", "not-an-id"]) == 2
    assert "is not a run id" in capsys.readouterr().err

    # The API bounds the prefix: hex digits, at most a whole id.
    assert stack.client.get("/runs", params={"id_prefix": "abcd"}).json()["total"] == 3
    assert stack.client.get("/runs", params={"id_prefix": "x" * 5}).status_code == 422
    assert stack.client.get("/runs", params={"id_prefix": "a" * 33}).status_code == 422
    assert stack.client.get("/run-groups", params={"id_prefix": "abcd"}).json()["total"] == 0


def test_cancel_and_retry_of_an_unknown_run_are_404(stack: Stack) -> None:
    assert stack.client.post(f"/runs/{uuid4()}/cancel").status_code == 404
    assert stack.client.post(f"/runs/{uuid4()}/retry").status_code == 404


# --- health ------------------------------------------------------------------------------


def test_health_and_readiness(stack: Stack) -> None:
    assert stack.client.get("/healthz").json() == {"status": "ok"}
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok"},
        # No worker has sent a heartbeat: the API is ready, a run would queue.
        "workers": dict.fromkeys(STAGES, "none"),
        "workers_warm": False,
    }
    assert stack.client.get("/docs").status_code == 200
    assert "/runs/{run_id}/retry" in stack.client.get("/openapi.json").json()["paths"]


def test_readiness_fails_when_the_database_is_unreachable(tmp_path: Path) -> None:
    coordinator = make_coordinator(tmp_path)
    coordinator.store.close()
    coordinator.store = RunStore.from_url("postgresql+psycopg://nobody@127.0.0.1:9/none")

    with TestClient(create_app(coordinator=coordinator, run_loops=False)) as client:
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["status"] == "not ready"
    assert response.json()["checks"]["database"].startswith("StoreUnavailableError")
    coordinator.close()


# --- with the background loops -----------------------------------------------------------


def test_background_loops_relay_commands_and_consume_events(tmp_path: Path) -> None:
    coordinator = make_coordinator(tmp_path)
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())
    # Intervals far longer than the test: only the relay's nudge can deliver in time.
    settings = CoordinatorSettings(
        state_dir=tmp_path, consumer_wait_s=0.1, relay_interval_s=60, watchdog_interval_s=60
    )
    app = create_app(settings, coordinator=coordinator)

    with TestClient(app) as client:
        stack = Stack(client, coordinator, bus)
        run_id = UUID(stack.start()["id"])
        [command] = stack.worker_receives("aggregation", wait_s=5)
        assert command.correlation_id == run_id
        bus.send_messages(EVENTS_TOPIC, [encode(succeeded(run_id, "aggregation"))])
        [command] = stack.worker_receives("split", wait_s=5)
        assert command.inputs == {"data": "raw/set1", **STAGE_OUTPUTS["aggregation"]}
        assert stack.run(str(run_id))["stages"][0]["status"] == "succeeded"
        ready = client.get("/readyz").json()
        assert (ready["status"], ready["checks"]) == (
            "ready",
            {"database": "ok", "bus": "ok", "loops": "ok"},
        )
        assert loop_threads()

    # Leaving the client runs the lifespan's shutdown, which stops (and joins) the loops.
    assert loop_threads() == []
    coordinator.close()
    bus.close()


def test_settings_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("RETRAINER_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("RETRAINER_TRAIN_TIMEOUT_S", "60")
    monkeypatch.setenv("RETRAINER_PORT", "9000")

    settings = CoordinatorSettings()

    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve()}/coordinator.sqlite"
    assert settings.port == 9000
    assert settings.policy.max_attempts == 5
    assert settings.policy.run_timeout("train") == 60
    assert settings.policy.run_timeout("split") == settings.run_timeout_s


def test_a_caller_supplied_correlation_id_is_idempotent_for_the_same_body(stack: Stack) -> None:
    run_id = str(uuid4())
    first = stack.start(correlation_id=run_id)
    assert first["id"] == first["correlation_id"] == run_id

    again = stack.client.post(
        "/runs",
        json={
            "recipe": "state_identifier",
            "data": "raw/set1",
            "params": {"n_clusters": 3},
            "correlation_id": run_id,
        },
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == run_id
    assert stack.coordinator.relay_outbox() == 1, "one run, one command"

    other = stack.client.post(
        "/runs",
        json={"recipe": "state_identifier", "data": "raw/set1", "correlation_id": run_id},
    )
    assert other.status_code == 409, other.text
    assert "params" in other.json()["detail"]
    assert stack.client.get("/runs").json()["total"] == 1


def test_entity_and_force_travel_to_the_stage_commands(stack: Stack) -> None:
    run = stack.start(entity="site=A/species=B", force=["train"])
    assert (run["entity"], run["force"]) == ("site=A/species=B", ["train"])
    stack.coordinator.relay_outbox()
    (command,) = stack.worker_receives("aggregation")
    assert (command.entity, command.force) == ("site=A/species=B", False)

    forced_everywhere = stack.start(force=True)
    assert forced_everywhere["force"] == ["aggregation", "split", "train"]
    stack.coordinator.relay_outbox()
    (command,) = stack.worker_receives("aggregation")
    assert command.force


@pytest.mark.parametrize("entity", ["a/..", "sp:1", "Cygnus buccinator"])
def test_an_entity_mlflow_would_refuse_is_422_and_starts_nothing(stack: Stack, entity: str) -> None:
    response = stack.client.post(
        "/runs", json={"recipe": "state_identifier", "data": "raw/set1", "entity": entity}
    )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == ["body", "entity"]
    assert entity in problem["msg"]
    assert stack.client.get("/runs").json()["total"] == 0


def test_runs_are_listed_by_recipe_and_entity_over_the_api_and_cli(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    swan = stack.start(entity="cygnus-olor")["id"]
    stack.start(entity="anser-anser")
    plain = stack.start()["id"]

    def listed(**query: str) -> tuple[list[str], int]:
        response = stack.client.get("/runs", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        return [run["id"] for run in page["runs"]], page["total"]

    assert listed(entity="cygnus-olor") == ([swan], 1)
    assert listed(entity="nobody") == ([], 0)
    assert listed(recipe="state_identifier")[1] == 3
    assert listed(recipe="image_classification") == ([], 0)
    assert listed(recipe="state_identifier", entity="anser-anser", status="succeeded") == ([], 0)
    assert plain not in listed(entity="cygnus-olor")[0]
    too_long = stack.client.get("/runs", params={"entity": "x" * 1000})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["query", "entity"]

    monkeypatch.setattr(cli, "_client", lambda _args: contextlib.nullcontext(stack.client))
    capsys.readouterr()
    assert cli.main(["runs", "list", "--entity", "cygnus-olor"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [swan[:8]]
