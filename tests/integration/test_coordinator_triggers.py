"""Blob-upload triggers over the real SQLite bus, local blob store and SQLite run store:
debounce and marker rules on an injected clock, duplicate detection across a restart, the
blob-events topic, and the local blob store's event hook."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.domain import Policy, Run
from coordinator.service import Coordinator, TriggerPolicy
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore
from shared.blobs.local import LocalBlobStore
from shared.bootstrap import create_blob_store
from shared.bus.port import OutgoingMessage
from shared.bus.sqlite import SqliteMessageBus
from shared.errors import ConfigurationError
from shared.events import BlobEventPublisher, blob_created_event, blob_event_message, parse_events
from shared.messages import RunStage, decode
from shared.recipe_registry import get_recipe
from shared.topology import (
    BLOB_EVENTS_TOPIC,
    COORDINATOR_SUBSCRIPTION,
    WORKER_SUBSCRIPTION,
    build_topology,
    command_topic,
)
from shared.triggers import TriggerRule, covered
from tests.clock import Clock
from tests.hostile import unreadable_blob_events

DEBOUNCE_S = 5.0
MAX_WAIT_S = 60.0
RULES = (
    TriggerRule(container="datasets", prefix="state-identifier/", recipe="state_identifier"),
    TriggerRule(
        container="labels",
        prefix="state/",
        recipe="state_identifier",
        params={"n_clusters": 2},
        marker="_READY",
    ),
)
CSV = b"timestamp,a\n1,2\n"


class Deployment:
    """The coordinator's files in one directory; each ``coordinator()`` is a fresh process."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.blobs = LocalBlobStore(root / "blobs")
        self.bus = self.open_bus()
        self._opened: list[Coordinator] = []

    def open_bus(self) -> SqliteMessageBus:
        return SqliteMessageBus(
            self.root / "bus.sqlite", topology=build_topology(lock_duration_s=0.5)
        )

    def coordinator(self, rules: tuple[TriggerRule, ...] = RULES) -> Coordinator:
        store = RunStore.from_url(f"sqlite:///{self.root / 'coordinator.sqlite'}")
        store.create_tables()
        coordinator = Coordinator(
            bus=self.open_bus(),
            blobs=self.blobs,
            store=store,
            recipes=get_recipe,
            policy=Policy(),
            triggers=TriggerPolicy(rules=rules, debounce_s=DEBOUNCE_S, debounce_max_s=MAX_WAIT_S),
            clock=self.clock,
        )
        self._opened.append(coordinator)
        return coordinator

    def upload(self, name: str, data: bytes = CSV) -> dict[str, Any]:
        """Write a blob and return the Event Grid event Azure Storage would send for it."""
        return blob_created_event(self.blobs.upload_blob(name, data))

    def worker_receives(self, wait_s: float = 0.2) -> list[RunStage]:
        received = self.bus.receive_messages(
            command_topic("aggregation"),
            WORKER_SUBSCRIPTION,
            max_message_count=10,
            max_wait_time=wait_s,
        )
        commands = []
        for message in received:
            self.bus.complete_message(message)
            command = decode(message.body, message.application_properties)
            assert isinstance(command, RunStage)
            commands.append(command)
        return commands

    def close(self) -> None:
        for coordinator in self._opened:
            coordinator.close()
        self.bus.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deployment(tmp_path: Path, clock: Clock) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, clock)
    yield deployment
    deployment.close()


def receive(coordinator: Coordinator, *events: dict[str, Any]) -> None:
    coordinator.receive_blob_events(parse_events(list(events)))


def runs(coordinator: Coordinator) -> list[Run]:
    return coordinator.list_runs()[0]


# --- debounce and marker -----------------------------------------------------------------


def test_the_trigger_loop_sleeps_until_a_burst_is_due_and_an_upload_wakes_it(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    assert coordinator.trigger_wait_s(3600) == 3600, "nothing pending: its longest sleep"
    folder = "datasets/state-identifier/2025-03-01"

    receive(coordinator, deployment.upload(f"{folder}/part-0.csv"))
    assert coordinator.trigger_due.is_set(), "an upload wakes the loop"
    assert abs(coordinator.trigger_wait_s(3600) - DEBOUNCE_S) < 0.1
    clock.advance(3)
    assert abs(coordinator.trigger_wait_s(3600) - (DEBOUNCE_S - 3)) < 0.1

    clock.advance(DEBOUNCE_S - 3)
    assert coordinator.trigger_wait_s(3600) < 0.1
    assert len(coordinator.fire_due_triggers()) == 1
    assert coordinator.trigger_wait_s(3600) == 3600


def test_a_burst_of_uploads_starts_one_run_once_the_window_is_quiet(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    folder = "datasets/state-identifier/2025-03-01"
    for i in range(3):
        receive(coordinator, deployment.upload(f"{folder}/part-{i}.csv"))
        clock.advance(2)
    # The last upload was 2 s ago: 3 s of quiet still to go.
    assert coordinator.fire_due_triggers() == []
    clock.advance(2.9)
    assert coordinator.fire_due_triggers() == []

    clock.advance(0.2)
    [run] = coordinator.fire_due_triggers()

    assert (run.recipe, run.data, run.params, run.trigger) == (
        "state_identifier",
        folder,
        {},
        "blob",
    )
    details = run.trigger_details
    assert details["events"] == 3
    assert details["first"]["blob"] == f"{folder}/part-0.csv"
    assert details["last"]["blob"] == f"{folder}/part-2.csv"
    assert details["rule"] == "datasets/state-identifier/* -> state_identifier (debounce)"
    assert coordinator.fire_due_triggers() == []
    assert coordinator.relay_outbox() == 1
    [command] = deployment.worker_receives()
    assert command.correlation_id == run.id
    assert command.inputs == {"data": folder}


def test_uploads_to_two_drop_folders_start_two_runs(deployment: Deployment, clock: Clock) -> None:
    coordinator = deployment.coordinator()
    receive(
        coordinator,
        deployment.upload("datasets/state-identifier/a/part-1.csv"),
        deployment.upload("datasets/state-identifier/b/nested/part-1.csv"),
        deployment.upload("datasets/state-identifier/a/part-2.csv"),
    )
    clock.advance(DEBOUNCE_S)

    started = coordinator.fire_due_triggers()

    assert sorted((r.data, r.trigger_details["events"]) for r in started) == [
        ("datasets/state-identifier/a", 2),
        ("datasets/state-identifier/b", 1),
    ]


def test_a_steady_trickle_starts_a_run_after_the_max_wait(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    for i in range(int(MAX_WAIT_S / 4)):
        receive(coordinator, deployment.upload(f"datasets/state-identifier/t/part-{i}.csv"))
        assert coordinator.fire_due_triggers() == []
        clock.advance(4)  # never quiet for 5 s

    [run] = coordinator.fire_due_triggers()
    assert run.trigger_details["events"] == MAX_WAIT_S / 4


def test_a_marker_rule_waits_for_the_marker_and_then_starts_at_once(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    receive(
        coordinator,
        deployment.upload("labels/state/batch-7/part-1.csv"),
        deployment.upload("labels/state/batch-7/part-2.csv"),
    )
    clock.advance(3600)
    assert coordinator.fire_due_triggers() == []
    assert coordinator.store.pending_bursts() == []

    receive(coordinator, deployment.upload("labels/state/batch-7/_READY", b""))
    assert coordinator.trigger_due.is_set()
    [run] = coordinator.fire_due_triggers()

    assert (run.data, run.params, run.trigger) == (
        "labels/state/batch-7",
        {"n_clusters": 2},
        "blob",
    )
    assert run.trigger_details["events"] == 1
    assert run.trigger_details["first"]["blob"] == "labels/state/batch-7/_READY"


def test_events_no_rule_covers_and_other_event_types_are_ignored(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    deleted = {**deployment.upload("datasets/state-identifier/x/a.csv")}
    deleted.update(id="deleted", eventType="Microsoft.Storage.BlobDeleted")

    report = coordinator.receive_blob_events(
        parse_events(
            [
                deployment.upload("other/state-identifier/x/a.csv"),
                deployment.upload("datasets/elsewhere/a.csv"),
                deleted,
            ]
        )
    )

    assert (report.received, report.accepted, report.ignored) == (3, 0, 3)
    clock.advance(3600)
    assert coordinator.fire_due_triggers() == []
    assert coordinator.store.pending_bursts() == []


def test_a_burst_whose_data_is_gone_when_due_is_dropped(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    receive(coordinator, deployment.upload("datasets/state-identifier/gone/a.csv"))
    deployment.blobs.delete_blob("datasets/state-identifier/gone/a.csv")
    clock.advance(DEBOUNCE_S)

    assert coordinator.fire_due_triggers() == []
    assert coordinator.store.pending_bursts() == []
    assert runs(coordinator) == []


def test_a_rule_naming_an_unknown_recipe_or_bad_params_stops_the_start(
    deployment: Deployment,
) -> None:
    with pytest.raises(ConfigurationError, match=r"trigger rule 0 .*nope"):
        deployment.coordinator((TriggerRule(container="datasets", recipe="nope"),))
    bad_params = TriggerRule(container="datasets", recipe="state_identifier", params={"x": 1})
    with pytest.raises(ConfigurationError, match="trigger rule 0"):
        deployment.coordinator((bad_params,))


# --- duplicates and restarts -------------------------------------------------------------


def test_duplicates_start_no_second_run_even_after_a_restart(
    deployment: Deployment, clock: Clock
) -> None:
    first = deployment.coordinator()
    event = deployment.upload("datasets/state-identifier/d/a.csv")
    receive(first, event)
    first.close()  # the process ends with the burst still pending

    restarted = deployment.coordinator()
    report = restarted.receive_blob_events(
        parse_events([event, {**event, "id": "another-id-for-the-same-write"}])
    )
    assert (report.accepted, report.duplicates) == (0, 2)
    clock.advance(DEBOUNCE_S)
    [run] = restarted.fire_due_triggers()  # the burst survived the restart
    assert run.trigger_details["events"] == 1

    restarted.close()
    again = deployment.coordinator()
    receive(again, event)
    clock.advance(DEBOUNCE_S)
    assert again.fire_due_triggers() == []
    assert len(runs(again)) == 1


def test_seen_events_are_forgotten_after_the_retention(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    event = deployment.upload("datasets/state-identifier/d/a.csv")
    receive(coordinator, event)
    clock.advance(8 * 24 * 3600)
    assert coordinator.trigger_tick() == 1
    # The store's retention (on the watchdog's thread; its first tick prunes at once).
    assert coordinator.store_retention_tick()["trigger_events_seen"] == 2

    receive(coordinator, event)  # a very late redelivery counts again
    assert len(coordinator.store.pending_bursts()) == 1


# --- the blob-events topic ---------------------------------------------------------------


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_an_event_on_the_topic_starts_a_run_after_the_window(
    deployment: Deployment, clock: Clock, schema: str
) -> None:
    coordinator = deployment.coordinator()
    event = deployment.upload("datasets/state-identifier/bus/part-1.csv")
    if schema == "cloudevents":
        event = {
            "specversion": "1.0",
            "id": event["id"],
            "source": event["topic"],
            "type": event["eventType"],
            "subject": event["subject"],
            "time": event["eventTime"],
            "data": event["data"],
        }
    body = json.dumps(event).encode()
    deployment.bus.send_messages(BLOB_EVENTS_TOPIC, [OutgoingMessage(body, message_id="m1")])

    assert coordinator.consume_blob_events(max_wait_s=1) == 1
    assert coordinator.fire_due_triggers() == []
    clock.advance(DEBOUNCE_S)
    [run] = coordinator.fire_due_triggers()
    coordinator.relay_outbox()

    assert run.trigger == "blob"
    [command] = deployment.worker_receives()
    assert (command.correlation_id, command.stage) == (run.id, "aggregation")
    assert command.inputs == {"data": "datasets/state-identifier/bus"}
    # Completed: nothing is redelivered once the lock would have expired.
    time.sleep(0.6)
    assert coordinator.consume_blob_events(max_wait_s=0.1) == 0


def test_malformed_events_on_the_topic_are_dead_lettered_with_the_reason(
    deployment: Deployment,
) -> None:
    coordinator = deployment.coordinator()
    event = deployment.upload("datasets/state-identifier/bus/part-1.csv")
    del event["data"]["eTag"]
    deployment.bus.send_messages(
        BLOB_EVENTS_TOPIC,
        [
            OutgoingMessage(json.dumps(event).encode(), message_id="no-etag"),
            OutgoingMessage(b"<xml/>", message_id="not-json"),
        ],
    )

    assert coordinator.consume_blob_events(max_wait_s=1) == 2

    dead = deployment.bus.receive_messages(
        BLOB_EVENTS_TOPIC,
        COORDINATOR_SUBSCRIPTION,
        max_message_count=10,
        max_wait_time=0.2,
        dead_letter=True,
    )
    reasons = {m.message_id: (m.dead_letter_reason, m.dead_letter_error_description) for m in dead}
    assert reasons["no-etag"][0] == "MalformedEvent"
    assert "data.eTag is missing" in str(reasons["no-etag"][1])
    assert "body is not JSON" in str(reasons["not-json"][1])
    assert coordinator.store.pending_bursts() == []


@pytest.mark.parametrize("case", range(8))
def test_an_unreadable_event_between_valid_ones_is_dead_lettered_alone_and_at_once(
    deployment: Deployment, case: int
) -> None:
    coordinator = deployment.coordinator()
    first = deployment.upload("datasets/state-identifier/bus/part-1.csv")
    second = deployment.upload("datasets/state-identifier/bus/part-2.csv")
    bad = unreadable_blob_events(first)[case]
    deployment.bus.send_messages(
        BLOB_EVENTS_TOPIC,
        [
            OutgoingMessage(json.dumps(first).encode(), message_id="first"),
            OutgoingMessage(bad, message_id="bad"),
            OutgoingMessage(json.dumps(second).encode(), message_id="second"),
        ],
    )

    assert coordinator.consume_blob_events(max_wait_s=1) == 3

    [burst] = coordinator.store.pending_bursts()
    assert burst.details["events"] == 2
    [dead] = deployment.bus.receive_messages(
        BLOB_EVENTS_TOPIC,
        COORDINATOR_SUBSCRIPTION,
        max_message_count=10,
        max_wait_time=0.2,
        dead_letter=True,
    )
    # After one delivery of the ten the subscription allows.
    assert (dead.message_id, dead.dead_letter_reason) == ("bad", "MalformedEvent")
    # A valid one whose 0.5 s lock lapsed on a loaded machine comes back: seen before.
    while coordinator.consume_blob_events(max_wait_s=0.7):
        pass
    [burst] = coordinator.store.pending_bursts()
    assert burst.details["events"] == 2


# --- the local blob store's events -------------------------------------------------------


def test_local_writes_become_events_on_the_topic_and_then_a_run(
    deployment: Deployment, clock: Clock
) -> None:
    coordinator = deployment.coordinator()
    publisher = BlobEventPublisher(deployment.open_bus, wanted=lambda name: covered(name, RULES))
    uploader = LocalBlobStore(deployment.root / "blobs", on_blob_created=publisher)

    uploader.upload_blob("datasets/state-identifier/local/part-1.csv", CSV)
    uploader.upload_blob("datasets/state-identifier/local/part-2.csv", CSV)
    uploader.upload_blob("artifacts/cache/aggregation/abc/data.csv", CSV)  # a worker's output
    uploader.upload_blob("datasets/elsewhere/x.csv", CSV)
    # The bus drops a re-sent event (same write, same id) by duplicate detection.
    props = uploader.get_blob_properties("datasets/state-identifier/local/part-1.csv")
    deployment.bus.send_messages(BLOB_EVENTS_TOPIC, [blob_event_message(props)])

    assert coordinator.consume_blob_events(max_wait_s=1) == 2
    clock.advance(DEBOUNCE_S)
    [run] = coordinator.fire_due_triggers()
    assert run.data == "datasets/state-identifier/local"
    assert run.trigger_details["events"] == 2
    publisher.close()


def test_a_failing_event_hook_does_not_fail_the_write(tmp_path: Path) -> None:
    def broken(_props: object) -> None:
        raise RuntimeError("bus down")

    store = LocalBlobStore(tmp_path, on_blob_created=broken)
    written = store.upload_blob("datasets/x/a.csv", CSV)
    assert store.get_blob_properties("datasets/x/a.csv") == written


def test_settings_enable_the_hook_only_for_blobs_a_rule_covers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRAINER_STATE_DIR", str(tmp_path))
    settings = CoordinatorSettings()
    bus = SqliteMessageBus(settings.resolved_bus_sqlite_path, topology=build_topology())

    def sent() -> list[str]:
        received = bus.receive_messages(
            BLOB_EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=10, max_wait_time=0.1
        )
        for message in received:
            bus.complete_message(message)
        return [json.loads(m.body)["subject"].rpartition("/blobs/")[2] for m in received]

    create_blob_store(settings).upload_blob("datasets/state-identifier/s/a.csv", CSV)
    create_blob_store(settings).upload_blob("artifacts/runs/r/x.json", b"{}")
    assert sent() == ["state-identifier/s/a.csv"]  # the default rule covers it

    off = settings.model_copy(update={"blob_events": False})
    create_blob_store(off).upload_blob("datasets/state-identifier/s/b.csv", CSV)
    no_rules = settings.model_copy(update={"trigger_rules": []})
    create_blob_store(no_rules).upload_blob("datasets/state-identifier/s/c.csv", CSV)
    assert sent() == []
    bus.close()


def test_background_loops_turn_an_upload_into_a_run(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from coordinator.api import create_app

    settings = CoordinatorSettings(
        state_dir=tmp_path,
        consumer_wait_s=0.1,
        trigger_debounce_s=0.2,
        trigger_interval_s=0.05,
        trigger_rules=list(RULES),
    )
    with TestClient(create_app(settings)) as client:
        uploader = create_blob_store(settings)
        for i in range(3):
            uploader.upload_blob(f"datasets/state-identifier/live/part-{i}.csv", CSV)
        deadline = time.monotonic() + 10
        while not (listed := client.get("/runs").json()["runs"]):
            assert time.monotonic() < deadline, "no run started"
            time.sleep(0.05)

        [summary] = listed
        run = client.get(f"/runs/{summary['id']}").json()
        assert run["trigger"] == "blob"
        assert run["data"] == "datasets/state-identifier/live"
        assert run["trigger_details"]["events"] == 3
        time.sleep(0.3)
        assert client.get("/runs").json()["total"] == 1


def test_retrainer_upload_on_embedded_defaults_starts_a_run_and_sample_data_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main, upload_sample_data
    from coordinator.bootstrap import build_coordinator

    monkeypatch.setenv("RETRAINER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RETRAINER_TRIGGER_DEBOUNCE_S", "0")
    drop = tmp_path / "drop"
    (drop / "sub").mkdir(parents=True)
    (drop / "part-1.csv").write_bytes(CSV)
    (drop / "sub" / "part-2.csv").write_bytes(CSV)
    settings = CoordinatorSettings()
    upload_sample_data(settings, "state_identifier", "datasets/state-identifier/sample", seed=1)

    assert main(["upload", str(drop), "datasets/state-identifier/2025-06-01"]) == 0
    assert main(["upload", str(drop / "part-1.csv"), "datasets/elsewhere"]) == 0

    out = capsys.readouterr().out
    assert "2 blob(s) under datasets/state-identifier/2025-06-01/" in out
    assert "a trigger rule covers them" in out
    assert "no trigger rule covers them" in out
    coordinator = build_coordinator(settings)
    assert coordinator.consume_blob_events(max_wait_s=0.5) == 2  # the sample data sent none
    [run] = coordinator.fire_due_triggers()
    assert (run.recipe, run.data) == ("state_identifier", "datasets/state-identifier/2025-06-01")
    assert run.trigger == "blob"
    coordinator.close()
