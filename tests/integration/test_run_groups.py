"""Run groups over the REST API, the real SQLite bus, local blob store and SQLite run store;
the test plays the stage workers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

import cli.groups as cli_groups
import cli.main as cli
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.service import Coordinator, GroupPolicy, TriggerPolicy
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.events import blob_created_event, parse_events
from shared.groups import GroupRule
from shared.messages import (
    STAGES,
    CancelStage,
    RunStage,
    Stage,
    StageFailed,
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
from shared.triggers import TriggerRule

CSV = b"timestamp,a\n1,2\n"
SPECIES = ("sp-a", "sp-b", "sp-c")
MAX_MEMBERS = 5


@dataclass
class Stack:
    client: TestClient
    coordinator: Coordinator
    bus: SqliteMessageBus
    blobs: LocalBlobStore

    def start(self, **body: Any) -> dict[str, Any]:
        response = self.client.post("/run-groups", json={"recipe": "state_identifier", **body})
        assert response.status_code == 202, response.text
        group: dict[str, Any] = response.json()
        return group

    def group(self, group_id: str) -> dict[str, Any]:
        response = self.client.get(f"/run-groups/{group_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def commands(self, stage: Stage) -> list[RunStage]:
        self.coordinator.relay_outbox()
        received = self.bus.receive_messages(
            command_topic(stage), WORKER_SUBSCRIPTION, max_message_count=50, max_wait_time=0.2
        )
        found = []
        for message in received:
            self.bus.complete_message(message)
            command = decode(message.body, message.application_properties)
            assert isinstance(command, RunStage)
            found.append(command)
        return found

    def report(self, *events: StageSucceeded | StageFailed) -> None:
        self.bus.send_messages(EVENTS_TOPIC, [encode(event) for event in events])
        while self.coordinator.consume_events(max_wait_s=0.1):
            pass

    def finish(self, run_id: UUID, *, from_stage: Stage = "aggregation", attempt: int = 1) -> None:
        """Every stage of the run from ``from_stage`` on succeeds."""
        for stage in STAGES[STAGES.index(from_stage) :]:
            self.report(done(run_id, stage, attempt if stage == from_stage else 1))


def done(run_id: UUID, stage: Stage, attempt: int = 1) -> StageSucceeded:
    details: dict[str, Any] = {}
    if stage == "register":
        details = {"model_name": f"state_identifier.{run_id}", "model_version": "1"}
    if stage == "tag":
        details = {"promoted": True, "reason": "first model"}
    return StageSucceeded(
        correlation_id=run_id,
        stage=stage,
        attempt=attempt,
        outputs={stage: f"artifacts/cache/{stage}/{run_id}"},
        details=details,
    )


def members(*entities: str) -> list[dict[str, Any]]:
    return [{"entity": e, "data": f"datasets/species/{e}"} for e in entities]


def make_stack(
    tmp_path: Path, *, max_members: int = MAX_MEMBERS
) -> tuple[Coordinator, SqliteMessageBus, LocalBlobStore]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    for species in (*SPECIES, "sp-d", "sp-e", "sp-f"):
        blobs.upload_blob(f"datasets/species/{species}/part-1.csv", CSV)
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        groups=GroupPolicy(max_members=max_members, default_concurrency=2),
    )
    return coordinator, SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()), blobs


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    coordinator, bus, blobs = make_stack(tmp_path)
    with TestClient(create_app(coordinator=coordinator, run_loops=False)) as client:
        yield Stack(client, coordinator, bus, blobs)
    coordinator.close()
    bus.close()


def statuses(group: dict[str, Any]) -> dict[str, str]:
    return {member["entity"]: member["status"] for member in group["member_runs"]}


# --- starting ----------------------------------------------------------------------------


def test_a_group_admits_its_members_concurrency_at_a_time_in_member_order(stack: Stack) -> None:
    group = stack.start(members=members(*SPECIES), params={"n_clusters": 3}, concurrency=2)

    assert (group["status"], group["members"], group["concurrency"]) == ("running", 3, 2)
    assert statuses(group) == {"sp-a": "queued", "sp-b": "queued", "sp-c": "waiting"}
    commands = stack.commands("aggregation")
    assert sorted(c.entity or "" for c in commands) == ["sp-a", "sp-b"]
    assert all(c.params == {"n_clusters": 3} for c in commands)
    runs = {m["entity"]: UUID(m["run_id"]) for m in group["member_runs"]}
    member_run = stack.client.get(f"/runs/{runs['sp-a']}").json()
    assert (member_run["group_id"], member_run["entity"]) == (group["id"], "sp-a")

    stack.finish(runs["sp-a"])
    assert stack.coordinator.admission_tick() == 1
    (command,) = stack.commands("aggregation")
    assert (command.entity, command.inputs) == ("sp-c", {"data": "datasets/species/sp-c"})
    assert statuses(stack.group(group["id"]))["sp-c"] == "queued"

    stack.finish(runs["sp-b"])
    stack.finish(runs["sp-c"])
    stack.coordinator.admission_tick()
    final = stack.group(group["id"])
    assert final["status"] == "succeeded"
    assert final["counts"] == {"succeeded": 3}
    assert final["finished_at"] is not None
    listed = stack.client.get("/run-groups", params={"status": "succeeded"}).json()
    assert [g["id"] for g in listed["groups"]] == [group["id"]]


def test_members_come_from_the_sub_prefixes_of_a_prefix(stack: Stack) -> None:
    for name in ("birds/x/a.csv", "birds/x/b.csv", "birds/y/a.csv", "birds/z/deep/a.csv"):
        stack.blobs.upload_blob(f"datasets/{name}", CSV)
    stack.blobs.upload_blob("datasets/birds/loose.csv", CSV)
    stack.blobs.upload_blob("datasets/birdsong/w/a.csv", CSV)

    group = stack.start(expand={"kind": "sub_prefixes", "prefix": "datasets/birds"})

    assert [(m["entity"], m["data"]) for m in group["member_runs"]] == [
        ("x", "datasets/birds/x"),
        ("y", "datasets/birds/y"),
        ("z", "datasets/birds/z"),
    ]
    assert group["source"] == {"kind": "sub_prefixes", "prefix": "datasets/birds", "members": 3}


def test_members_come_from_the_rows_of_a_csv_blob(stack: Stack) -> None:
    stack.blobs.upload_blob(
        "datasets/species/candidate_species.csv",
        b"species,n_clusters\nsp-a,2\nsp-b,\nsp-c,4\n",
    )
    group = stack.start(
        expand={
            "kind": "csv_rows",
            "blob": "datasets/species/candidate_species.csv",
            "entity_column": "species",
            "data_template": "datasets/species/{entity}",
            "param_columns": ["n_clusters"],
        },
        concurrency=3,
    )
    assert [m["entity"] for m in group["member_runs"]] == list(SPECIES)
    params = {c.entity: c.params for c in stack.commands("aggregation")}
    assert params == {"sp-a": {"n_clusters": "2"}, "sp-b": {}, "sp-c": {"n_clusters": "4"}}


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({"members": []}, ["body", "members"], "at least one member"),
        (
            {"members": members("sp-a", "sp-b", "sp-a")},
            ["body", "members", 2, "entity"],
            "duplicate entity 'sp-a' (also member 0)",
        ),
        (
            {"members": members("sp-a", "sp-b", "sp-c", "sp-d", "sp-e", "sp-f")},
            ["body", "members"],
            "6 members is more than the maximum of 5",
        ),
        (
            {"members": [{"entity": "sp-a/..", "data": "datasets/species/sp-a"}]},
            ["body", "members", 0, "entity"],
            "'..' part",
        ),
        (
            {"members": [{"entity": "sp:a", "data": "datasets/species/sp-a"}]},
            ["body", "members", 0, "entity"],
            "':'",
        ),
        (
            {"members": [{"entity": "sp-z", "data": "datasets/species/sp-z"}]},
            ["body", "members", 0, "data"],
            "no blobs",
        ),
        (
            {
                "members": [
                    {"entity": "sp-a", "data": "datasets/species/sp-a", "params": {"n_clusters": 1}}
                ]
            },
            ["body", "members", 0, "params", "n_clusters"],
            "greater than or equal to 2",
        ),
        (
            {"expand": {"kind": "sub_prefixes", "prefix": "datasets/species"}},
            ["body", "members"],
            "more than the maximum",
        ),
        (
            {
                "expand": {
                    "kind": "csv_rows",
                    "blob": "datasets/nope.csv",
                    "data_template": "d/{entity}",
                }
            },
            ["body", "expand", "blob"],
            "blob not found",
        ),
        (
            {"members": members("sp-a"), "expand": {"kind": "sub_prefixes", "prefix": "a/b"}},
            ["body", "members"],
            "not both",
        ),
    ],
)
def test_a_bad_group_is_422_naming_the_problem_and_starts_nothing(
    stack: Stack, body: dict[str, Any], loc: list[Any], message: str
) -> None:
    stack.blobs.upload_blob("datasets/species/sp-f/part-1.csv", CSV)
    response = stack.client.post("/run-groups", json={"recipe": "state_identifier", **body})

    assert response.status_code == 422, response.text
    problems = response.json()["detail"]
    assert any(p["loc"] == loc and message in p["msg"] for p in problems), problems
    assert stack.client.get("/run-groups").json()["total"] == 0
    assert stack.client.get("/runs").json()["total"] == 0
    assert stack.coordinator.relay_outbox() == 0


# --- cancel and retry --------------------------------------------------------------------


def test_cancelling_a_group_midway_leaves_no_member_running(stack: Stack) -> None:
    group = stack.start(members=members(*SPECIES), concurrency=1)
    runs = [UUID(m["run_id"]) for m in group["member_runs"]]
    stack.finish(runs[0])
    stack.coordinator.admission_tick()
    stack.commands("aggregation")

    response = stack.client.post(f"/run-groups/{group['id']}/cancel")

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert statuses(cancelled) == {"sp-a": "succeeded", "sp-b": "cancelled", "sp-c": "cancelled"}
    assert stack.coordinator.admission_tick() == 0
    assert stack.commands("aggregation") == []
    stop = stack.bus.receive_messages(CONTROL_TOPIC, TRAIN_SUBSCRIPTION, max_wait_time=0.2)
    (cancel,) = [decode(m.body, m.application_properties) for m in stop]
    assert isinstance(cancel, CancelStage) and cancel.correlation_id == runs[1]
    again = stack.client.post(f"/run-groups/{group['id']}/cancel")
    assert again.status_code == 409


def test_a_failed_member_is_retried_alone(stack: Stack) -> None:
    group = stack.start(members=members(*SPECIES), concurrency=3)
    runs = {m["entity"]: UUID(m["run_id"]) for m in group["member_runs"]}
    stack.commands("aggregation")
    stack.finish(runs["sp-a"])
    stack.finish(runs["sp-c"])
    stack.report(
        StageFailed(
            correlation_id=runs["sp-b"],
            stage="aggregation",
            attempt=1,
            error="part-1.csv, row 2: 'x' is not a number",
            error_type="DataValidationError",
            retryable=False,
        )
    )
    stack.coordinator.admission_tick()
    failed = stack.group(group["id"])
    assert (failed["status"], failed["counts"]) == ("failed", {"succeeded": 2, "failed": 1})
    before = {m["entity"]: m for m in failed["member_runs"]}

    response = stack.client.post(f"/run-groups/{group['id']}/retry-failed")

    assert response.status_code == 202, response.text
    (command,) = stack.commands("aggregation")
    assert (command.correlation_id, command.attempt) == (runs["sp-b"], 2)
    stack.finish(runs["sp-b"], attempt=2)
    stack.coordinator.admission_tick()
    after = stack.group(group["id"])
    assert after["status"] == "succeeded"
    for entity in ("sp-a", "sp-c"):
        assert after["member_runs"][SPECIES.index(entity)] == before[entity], "untouched"
    nothing = stack.client.post(f"/run-groups/{group['id']}/retry-failed")
    assert nothing.status_code == 409


def test_unknown_groups_are_404(stack: Stack) -> None:
    unknown = "00000000-0000-0000-0000-000000000001"
    assert stack.client.get(f"/run-groups/{unknown}").status_code == 404
    assert stack.client.post(f"/run-groups/{unknown}/cancel").status_code == 404
    assert stack.client.post(f"/run-groups/{unknown}/retry-failed").status_code == 404


# --- concurrency under load --------------------------------------------------------------


def test_no_more_than_k_members_are_in_a_stage_at_once_under_load(tmp_path: Path) -> None:
    """The coordinator's loops run for real; a fake worker finishes every stage it is sent
    and records how many runs it holds between their first command and their last event."""
    count, limit = 24, 3
    coordinator, bus, blobs = make_stack(tmp_path, max_members=count)
    for index in range(count):
        blobs.upload_blob(f"datasets/many/m{index:02d}/part-1.csv", CSV)
    in_flight: set[UUID] = set()
    most = 0
    stop = threading.Event()

    def worker() -> None:
        nonlocal most
        while not stop.is_set():
            for stage in STAGES:
                received = bus.receive_messages(
                    command_topic(stage),
                    WORKER_SUBSCRIPTION,
                    max_message_count=10,
                    max_wait_time=0.02,
                )
                for message in received:
                    bus.complete_message(message)
                    command = decode(message.body, message.application_properties)
                    assert isinstance(command, RunStage)
                    in_flight.add(command.correlation_id)
                    most = max(most, len(in_flight))
                    if stage == "tag":
                        in_flight.discard(command.correlation_id)
                    bus.send_messages(EVENTS_TOPIC, [encode(done(command.correlation_id, stage))])

    thread = threading.Thread(target=worker, daemon=True)
    app = create_app(coordinator=coordinator)
    with TestClient(app) as client:
        thread.start()
        response = client.post(
            "/run-groups",
            json={
                "recipe": "state_identifier",
                "expand": {"kind": "sub_prefixes", "prefix": "datasets/many"},
                "concurrency": limit,
            },
        )
        assert response.status_code == 202, response.text
        group_id = response.json()["id"]
        for _ in range(1200):
            if client.get(f"/run-groups/{group_id}").json()["status"] != "running":
                break
            stop.wait(0.1)
        final = client.get(f"/run-groups/{group_id}").json()
    stop.set()
    thread.join(5)
    coordinator.close()
    bus.close()

    assert final["status"] == "succeeded", final["counts"]
    assert final["counts"] == {"succeeded": count}
    assert most == limit


# --- the CLI -----------------------------------------------------------------------------


def test_the_cli_starts_shows_lists_cancels_and_retries_groups(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_groups, "_client", lambda _args: contextlib.nullcontext(stack.client))

    assert (
        cli.main(
            [
                "group",
                "start",
                "state_identifier",
                "--member",
                "sp-a=datasets/species/sp-a",
                "--member",
                "sp-b=datasets/species/sp-b",
                "--concurrency",
                "1",
                "-p",
                "n_clusters=4",
            ]
        )
        == 0
    )
    group_id, counts = capsys.readouterr().out.splitlines()
    assert counts == "[0/2] running: waiting 1, queued 1"
    (command,) = stack.commands("aggregation")
    assert command.params == {"n_clusters": 4}

    assert cli.main(["group", "show", group_id]) == 0
    shown = capsys.readouterr().out
    assert "sp-a" in shown and "queued" in shown and "waiting" in shown
    assert cli.main(["group", "list"]) == 0
    assert group_id in capsys.readouterr().out

    assert cli.main(["group", "cancel", group_id]) == 0
    assert capsys.readouterr().out.strip() == "[2/2] cancelled: cancelled 2"
    assert cli.main(["group", "retry", group_id]) == 0
    assert capsys.readouterr().out.strip() == "[0/2] running: waiting 1, running 1"
    assert cli.main(["group", "start", "state_identifier", "--member", "x=datasets/nope"]) == 2
    assert "members.0.data: no blobs" in capsys.readouterr().err


# --- a trigger rule that starts a group --------------------------------------------------


def test_a_marker_under_a_group_rule_starts_a_group_over_its_folder(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    rule = TriggerRule(
        container="datasets",
        prefix="species/",
        recipe="state_identifier",
        marker="_READY",
        params={"n_clusters": 2},
        group=GroupRule(concurrency=1),
    )
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(),
        triggers=TriggerPolicy(rules=(rule,)),
    )
    events = [
        blob_created_event(blobs.upload_blob(f"datasets/species/2025-06/{name}", CSV))
        for name in ("sp-a/1.csv", "sp-b/1.csv", "sp-b/2.csv")
    ]
    coordinator.receive_blob_events(parse_events(events))
    assert coordinator.fire_due_triggers() == []
    assert coordinator.list_groups()[1] == 0, "no marker yet"

    marker = blob_created_event(blobs.upload_blob("datasets/species/2025-06/_READY", b""))
    coordinator.receive_blob_events(parse_events([marker]))
    coordinator.receive_blob_events(parse_events([marker]))  # redelivered: counted once
    coordinator.fire_due_triggers()

    (view,), total = coordinator.list_groups()
    assert total == 1
    group = coordinator.get_group(view.group.id)
    assert (group.group.trigger, group.group.concurrency) == ("blob", 1)
    assert [(entity, run.data, run.params, run.status) for _, entity, run in group.members] == [
        ("sp-a", "datasets/species/2025-06/sp-a", {"n_clusters": 2}, "queued"),
        ("sp-b", "datasets/species/2025-06/sp-b", {"n_clusters": 2}, "waiting"),
    ]
    assert group.group.trigger_details["rule"] == rule.describe()
    coordinator.fire_due_triggers()
    assert coordinator.list_groups()[1] == 1, "the burst started one group"
    coordinator.close()
