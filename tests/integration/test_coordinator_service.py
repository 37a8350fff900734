"""The coordinator service over the real SQLite bus, local blob store and SQLite run store:
crash safety (a crash between any two steps loses nothing and duplicates nothing), bus
message handling, the watchdog and scheduled retries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from coordinator import store as store_module
from coordinator.domain import Policy, Run, WorkerSeen
from coordinator.service import (
    HEARTBEAT_HORIZON_S,
    BackgroundLoops,
    Coordinator,
    LoopIntervals,
)
from coordinator.store import RunStore, StoreUnavailableError
from shared.blobs.local import LocalBlobStore
from shared.bus.port import OutgoingMessage
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import (
    RunStage,
    Stage,
    StageFailed,
    StageStarted,
    StageSucceeded,
    WorkerHeartbeat,
    decode,
    encode,
    utcnow,
)
from shared.recipe_registry import get_recipe
from shared.topology import (
    CONTROL_TOPIC,
    COORDINATOR_SUBSCRIPTION,
    EVENTS_TOPIC,
    WORKER_SUBSCRIPTION,
    build_topology,
    command_topic,
)
from tests.clock import Clock
from tests.hostile import undecodable_messages
from tests.waiting import WAIT_S, wait_until

# Long enough that a busy machine settles a message before its lock lapses; a test that needs
# a lapsed lock waits for the redelivery (``consume_until``), however long that takes.
LOCK_S = 2.0


class Crash(BaseException):
    """Stands for the process dying at this point."""


class Deployment:
    """The coordinator's files in one directory; each ``coordinator()`` is a fresh process."""

    def __init__(self, root: Path, policy: Policy, clock: Callable[[], datetime]) -> None:
        self.root = root
        self.policy = policy
        self.clock = clock
        self.blobs = LocalBlobStore(root / "blobs")
        self.blobs.upload_blob("raw/set1/part-1.csv", b"timestamp,a\n1,2\n")
        self.worker_bus = self.bus()
        self._opened: list[Coordinator] = []

    def bus(self) -> SqliteMessageBus:
        return SqliteMessageBus(
            self.root / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S)
        )

    def coordinator(self) -> Coordinator:
        store = RunStore.from_url(f"sqlite:///{self.root / 'coordinator.sqlite'}")
        store.create_tables()
        coordinator = Coordinator(
            bus=self.bus(),
            blobs=self.blobs,
            store=store,
            recipes=get_recipe,
            policy=self.policy,
            clock=self.clock,
        )
        self._opened.append(coordinator)
        return coordinator

    def start(self, coordinator: Coordinator) -> Run:
        return coordinator.start_run("state_identifier", "raw/set1", {"n_clusters": 3})

    def worker_receives(self, stage: Stage, wait_s: float = 0.2) -> list[RunStage]:
        received = self.worker_bus.receive_messages(
            command_topic(stage), WORKER_SUBSCRIPTION, max_message_count=10, max_wait_time=wait_s
        )
        for message in received:
            self.worker_bus.complete_message(message)
        return [_command(m.body, m.application_properties) for m in received]

    def report(self, *messages: OutgoingMessage) -> None:
        self.worker_bus.send_messages(EVENTS_TOPIC, messages)

    def dead_letters(self) -> list[tuple[str | None, str | None]]:
        received = self.worker_bus.receive_messages(
            EVENTS_TOPIC,
            COORDINATOR_SUBSCRIPTION,
            max_message_count=10,
            max_wait_time=0.2,
            dead_letter=True,
        )
        return [(m.dead_letter_reason, m.dead_letter_error_description) for m in received]

    def close(self) -> None:
        for coordinator in self._opened:
            coordinator.close()
        self.worker_bus.close()


def consume_until(coordinator: Coordinator, count: int) -> int:
    """Consume events until ``count`` were handled (a redelivery comes when its lock lapses)."""
    handled = [0]

    def enough() -> bool:
        handled[0] += coordinator.consume_events(max_wait_s=LOCK_S)
        return handled[0] >= count

    wait_until(enough, f"{count} events to be handled")
    return handled[0]


def _command(body: bytes, properties: Any) -> RunStage:
    command = decode(body, properties)
    assert isinstance(command, RunStage)
    return command


BACKOFF_S = 1.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, Policy(backoff_base_s=BACKOFF_S, queue_timeout_s=60), utcnow)
    yield deployment
    deployment.close()


def succeeded(run_id: UUID, stage: Stage, attempt: int = 1) -> StageSucceeded:
    return StageSucceeded(
        correlation_id=run_id, stage=stage, attempt=attempt, outputs={stage: f"out/{stage}"}
    )


# --- crash safety ------------------------------------------------------------------------


def test_commands_committed_but_never_relayed_are_published_once_after_a_restart(
    deployment: Deployment,
) -> None:
    run = deployment.start(deployment.coordinator())
    # The first process dies before its relay ran.

    restarted = deployment.coordinator()

    assert restarted.relay_outbox() == 1
    assert restarted.relay_outbox() == 0
    [command] = deployment.worker_receives("aggregation")
    assert command.correlation_id == run.id
    assert deployment.worker_receives("aggregation") == []


def test_a_crash_between_publishing_and_marking_published_duplicates_nothing(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = deployment.coordinator()
    run = deployment.start(first)

    def crash(ids: object) -> None:
        raise Crash

    monkeypatch.setattr(first.store, "mark_published", crash)
    with pytest.raises(Crash):
        first.relay_outbox()

    restarted = deployment.coordinator()
    assert restarted.relay_outbox() == 1  # published again ...
    [command] = deployment.worker_receives("aggregation")  # ... and dropped by the bus
    assert command.correlation_id == run.id
    assert restarted.relay_outbox() == 0


@pytest.mark.parametrize("kind", ["started", "succeeded"])
def test_an_event_processed_but_not_completed_is_ignored_when_redelivered(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    first = deployment.coordinator()
    run = deployment.start(first)
    event = (
        StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")
        if kind == "started"
        else succeeded(run.id, "aggregation")
    )
    deployment.report(encode(event))

    def crash(message: object) -> None:
        raise Crash

    monkeypatch.setattr(first.bus, "complete_message", crash)
    with pytest.raises(Crash):
        first.consume_events(max_wait_s=1)
    after_first = first.get_run(run.id)
    outbox_after_first = first.store.pending_outbox()
    assert after_first != run

    restarted = deployment.coordinator()
    # The event comes back once its lock expires; deciding on it again would, for a start,
    # move the deadline and, for a success, be ignored by the state machine anyway.
    assert consume_until(restarted, 1) == 1

    assert restarted.get_run(run.id) == after_first
    assert restarted.store.pending_outbox() == outbox_after_first
    assert restarted.consume_events(max_wait_s=LOCK_S * 1.25) == 0


def test_a_crash_inside_the_transaction_keeps_neither_the_state_nor_the_commands(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = deployment.coordinator()
    run = deployment.start(coordinator)
    coordinator.relay_outbox()
    deployment.report(encode(succeeded(run.id, "aggregation")))
    real_encoded = store_module._encoded
    crashes: list[object] = []

    def crash_once(decision: Any) -> Any:
        # Runs after the run row was updated, before the outbox rows are inserted.
        if not crashes:
            crashes.append(decision)
            raise StoreUnavailableError("connection dropped")
        return real_encoded(decision)

    monkeypatch.setattr(store_module, "_encoded", crash_once)

    assert coordinator.consume_events(max_wait_s=1) == 1
    assert crashes
    assert coordinator.get_run(run.id) == run
    assert coordinator.store.pending_outbox() == []

    # The message was abandoned, so it is delivered again at once and processed in full.
    assert coordinator.consume_events(max_wait_s=1) == 1
    assert coordinator.get_run(run.id).stage("split").status == "queued"
    assert [m.topic for m in coordinator.store.pending_outbox()] == ["stage-split"]


# --- handling bus messages ---------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", undecodable_messages("stage_succeeded"), ids=lambda message: message.message_id
)
def test_an_undecodable_event_between_valid_ones_is_dead_lettered_alone_and_at_once(
    deployment: Deployment, bad: OutgoingMessage
) -> None:
    coordinator = deployment.coordinator()
    run = deployment.start(coordinator)
    started = StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")
    deployment.report(encode(started), bad, encode(succeeded(run.id, "aggregation")))

    assert coordinator.consume_events(max_wait_s=1) == 3

    after = coordinator.get_run(run.id)
    assert after.stage("aggregation").status == "succeeded"
    assert after.stage("split").status == "queued"
    [(reason, description)] = deployment.dead_letters()
    assert reason == "MalformedMessage"
    assert description and len(description) <= 1000
    # Settled, each of them: nothing comes back once the locks would have lapsed.
    assert coordinator.consume_events(max_wait_s=LOCK_S * 1.25) == 0


def test_a_message_whose_handling_fails_is_abandoned_without_its_neighbours(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator = deployment.coordinator()
    runs = [deployment.start(coordinator) for _ in range(3)]
    unlucky = runs[1].id
    deployment.report(*(encode(succeeded(run.id, "aggregation")) for run in runs))
    real_apply = coordinator.store.apply

    def apply(run_id: UUID, *args: Any, **kwargs: Any) -> Any:
        if run_id == unlucky:
            raise RuntimeError("a bug that only this run meets")
        return real_apply(run_id, *args, **kwargs)

    monkeypatch.setattr(coordinator.store, "apply", apply)
    assert coordinator.consume_events(max_wait_s=1) == 3

    statuses = [coordinator.get_run(run.id).stage("split").status for run in runs]
    assert statuses == ["queued", "pending", "queued"]
    # Abandoned, not dead-lettered: it comes back at once and, the bug gone, goes through.
    monkeypatch.setattr(coordinator.store, "apply", real_apply)
    assert coordinator.consume_events(max_wait_s=1) == 1
    assert coordinator.get_run(unlucky).stage("split").status == "queued"
    assert deployment.dead_letters() == []


def test_malformed_and_unexpected_messages_are_dead_lettered_with_a_reason(
    deployment: Deployment,
) -> None:
    coordinator = deployment.coordinator()
    run = deployment.start(coordinator)
    deployment.report(
        OutgoingMessage(
            body=b"{not json",
            message_id="m-1",
            application_properties={"message_type": "stage_succeeded", "schema_version": 1},
        ),
        OutgoingMessage(body=b"{}", message_id="m-2", application_properties={"x": 1}),
        encode(
            RunStage(correlation_id=run.id, stage="split", attempt=1, recipe="state_identifier")
        ),
        encode(succeeded(uuid4(), "aggregation")),
    )

    assert coordinator.consume_events(max_wait_s=1) == 4

    reasons = deployment.dead_letters()
    assert [reason for reason, _ in reasons] == [
        "MalformedMessage",
        "MalformedMessage",
        "UnexpectedMessage",
        "UnknownRun",
    ]
    assert "body is not JSON" in str(reasons[0][1])
    assert "unknown message_type" in str(reasons[1][1])
    assert coordinator.get_run(run.id) == run


def test_a_retryable_failure_is_retried_after_the_backoff_through_the_bus(
    deployment: Deployment,
) -> None:
    coordinator = deployment.coordinator()
    run = deployment.start(coordinator)
    coordinator.relay_outbox()
    deployment.worker_receives("aggregation")
    deployment.report(
        encode(StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")),
        encode(
            StageFailed(
                correlation_id=run.id,
                stage="aggregation",
                attempt=1,
                error="disk hiccup",
                error_type="OSError",
                retryable=True,
            )
        ),
    )
    before = utcnow()  # the retry is due no earlier than BACKOFF_S after this
    consume_until(coordinator, 2)

    assert coordinator.relay_outbox() == 1
    # Scheduled BACKOFF_S after the failure was handled: hidden until then (checked only while
    # it is surely still before then: a busy machine may get here later), delivered after it.
    early = deployment.worker_receives("aggregation", wait_s=0)
    if utcnow() < before + timedelta(seconds=BACKOFF_S * 0.9):
        assert early == []
    [retry] = early or wait_until(
        lambda: deployment.worker_receives("aggregation", wait_s=1), "the retry"
    )
    assert retry.attempt == 2
    aggregation = coordinator.get_run(run.id).stage("aggregation")
    assert [(a.attempt, a.outcome, a.error) for a in aggregation.history] == [
        (1, "failed", "OSError: disk hiccup")
    ]


# --- watchdog ----------------------------------------------------------------------------


def idle_worker(coordinator: Coordinator, now: datetime, stage: Stage = "aggregation") -> None:
    """A live worker of ``stage`` that has found nothing to take since before ``now`` and
    will go on like that for the rest of the test."""
    far = now + timedelta(days=1)
    seen = WorkerSeen(f"{stage}@test", far, now - timedelta(seconds=1), far)
    coordinator.store.record_heartbeat(str(uuid4()), seen.worker, stage, seen, slots=1, busy=0)


def heartbeat(
    worker_id: UUID, stage: Stage, *, warming: bool, sequence: int = 1
) -> OutgoingMessage:
    return encode(
        WorkerHeartbeat(
            correlation_id=worker_id,
            worker=f"{stage}@test",
            stage=stage,
            interval_s=10.0,
            slots=1,
            busy=0,
            warming=warming,
            sequence=sequence,
        )
    )


def test_worker_readiness_goes_by_the_heartbeats_heard_since_the_coordinator_started(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(), clock)
    try:
        # A worker of a stack stopped before this coordinator started: it does not count.
        deployment.report(heartbeat(uuid4(), "tag", warming=False))
        clock.now = utcnow()
        coordinator = deployment.coordinator()
        train = uuid4()
        deployment.report(
            heartbeat(uuid4(), "aggregation", warming=False),
            heartbeat(train, "train", warming=True),
        )
        consume_until(coordinator, 3)
        assert coordinator.worker_readiness() == {
            "aggregation": "warm",
            "split": "none",
            "train": "warming",
            "register": "none",
            "tag": "none",
        }

        deployment.report(heartbeat(train, "train", warming=False, sequence=2))
        consume_until(coordinator, 1)
        assert coordinator.worker_readiness()["train"] == "warm"

        # Three intervals without a heartbeat: gone.
        clock.advance(3 * 10.0 + 2)
        assert set(coordinator.worker_readiness().values()) == {"none"}
    finally:
        deployment.close()


def test_watchdog_retries_a_stage_nobody_started_and_then_fails_the_run(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(max_attempts=2, queue_timeout_s=60), clock)
    try:
        coordinator = deployment.coordinator()
        idle_worker(coordinator, clock.now)
        run = deployment.start(coordinator)
        coordinator.relay_outbox()

        clock.advance(59)
        assert coordinator.watchdog_tick() == 0
        clock.advance(1)
        assert coordinator.watchdog_tick() == 1

        aggregation = coordinator.get_run(run.id).stage("aggregation")
        assert (aggregation.status, aggregation.attempt) == ("queued", 2)
        stop, retry = coordinator.store.pending_outbox()
        assert (stop.topic, stop.message.message_id) == (
            CONTROL_TOPIC,
            f"{run.id}:aggregation:1:cancel",
        )
        assert retry.message.message_id == f"{run.id}:aggregation:2"
        assert retry.message.scheduled_enqueue_time == clock.now + timedelta(seconds=2)
        assert coordinator.watchdog_tick() == 0

        clock.advance(2 + 60)
        assert coordinator.watchdog_tick() == 1
        failed = coordinator.get_run(run.id)
        assert failed.status == "failed"
        assert failed.error == "aggregation did not start within 60 s after 2 attempts"
        assert coordinator.watchdog_tick() == 0
    finally:
        deployment.close()


# --- timed loops that sleep until their work is due ----------------------------------------


def test_the_watchdog_sleeps_until_the_earliest_deadline_and_an_earlier_one_wakes_it(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(queue_timeout_s=60), clock)
    try:
        coordinator = deployment.coordinator()
        # Past the start-up's heartbeat horizon (which the watchdog also wakes for).
        clock.advance(HEARTBEAT_HORIZON_S)
        assert coordinator.watchdog_wait_s(3600) == 3600, "no deadline: its longest sleep"
        deployment.start(coordinator)
        assert coordinator.watchdog_due.is_set(), "a deadline the watchdog did not know of"
        coordinator.watchdog_due.clear()
        assert abs(coordinator.watchdog_wait_s(3600) - 60) < 0.1

        clock.advance(10)
        deployment.start(coordinator)
        assert not coordinator.watchdog_due.is_set(), "a later deadline lets it sleep on"
        assert abs(coordinator.watchdog_wait_s(3600) - 50) < 0.1
        assert coordinator.watchdog_wait_s(20) == 20
    finally:
        deployment.close()


def test_loops_whose_intervals_outlast_the_test_relay_consume_time_out_and_stop_when_due(
    tmp_path: Path,
) -> None:
    deployment = Deployment(
        tmp_path, Policy(max_attempts=2, run_timeout_s=0.5, backoff_base_s=0), utcnow
    )
    coordinator = deployment.coordinator()
    # Committed before the loops start: the relay publishes it at once, not after an interval.
    run = deployment.start(coordinator)
    never = WAIT_S * 2
    loops = BackgroundLoops(
        coordinator,
        LoopIntervals(
            consumer_wait_s=never,
            relay_interval_s=never,
            watchdog_interval_s=never,
            trigger_interval_s=never,
            group_interval_s=never,
        ),
    )
    loops.start()
    threads = list(loops._threads)
    try:
        [command] = wait_until(
            lambda: deployment.worker_receives("aggregation"), "the command relayed at start"
        )
        started = StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")
        deployment.report(encode(started))
        # The consumer is woken by the event, the watchdog by the deadline it wrote (0.5 s),
        # the relay by the retry's command.
        [retry] = wait_until(lambda: deployment.worker_receives("aggregation"), "the retry")
        assert (command.attempt, retry.attempt) == (1, 2)
        assert "did not report within 0.5 s" in (
            coordinator.get_run(run.id).stage("aggregation").history[0].error or ""
        )
    finally:
        loops.stop(timeout_s=WAIT_S)
        deployment.close()
    assert not [thread.name for thread in threads if thread.is_alive()], "every loop stopped"


# --- stages without a live worker --------------------------------------------------------


def _waiting(coordinator: Coordinator, run_id: UUID, stage: Stage = "aggregation") -> str | None:
    return coordinator.get_run(run_id).stage(stage).waiting


def test_a_stage_whose_workers_stopped_their_heartbeats_is_reported_before_its_deadline(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(queue_timeout_s=300), clock)
    try:
        coordinator = deployment.coordinator()
        # Its last heartbeat: live for 31 s more.
        seen = WorkerSeen("aggregation@host", clock.now, None, clock.now + timedelta(seconds=31))
        coordinator.store.record_heartbeat("w1", seen.worker, "aggregation", seen, slots=1, busy=1)
        run = deployment.start(coordinator)
        deadline = coordinator.get_run(run.id).stage("aggregation").deadline
        # The watchdog wakes when the heartbeat lapses, long before the queue deadline.
        assert abs(coordinator.watchdog_wait_s(3600) - 31) < 0.1

        assert coordinator.watchdog_tick() == 0
        assert _waiting(coordinator, run.id) is None, "still live"
        clock.advance(31)
        assert coordinator.watchdog_tick() == 0, "no deadline was due"

        aggregation = coordinator.get_run(run.id).stage("aggregation")
        assert aggregation.waiting == "no live worker for stage aggregation"
        assert (aggregation.status, aggregation.attempt, aggregation.deadline) == (
            "queued",
            1,
            deadline,
        )
        assert coordinator.store.pending_outbox()[-1].message.message_id == (
            f"{run.id}:aggregation:1"
        ), "no command or CancelStage"
    finally:
        deployment.close()


def test_a_stage_never_heard_from_is_reported_once_the_coordinator_waited_a_horizon(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(queue_timeout_s=300), clock)
    try:
        coordinator = deployment.coordinator()
        run = deployment.start(coordinator)
        # Its workers may be starting too: not known before a heartbeat horizon has passed.
        assert abs(coordinator.watchdog_wait_s(3600) - HEARTBEAT_HORIZON_S) < 0.1
        clock.advance(HEARTBEAT_HORIZON_S - 1)
        coordinator.watchdog_tick()
        assert _waiting(coordinator, run.id) is None
        clock.advance(1)
        coordinator.watchdog_tick()
        assert _waiting(coordinator, run.id) == "no live worker for stage aggregation"
    finally:
        deployment.close()


def test_a_worker_without_heartbeats_that_starts_stages_is_not_taken_for_dead(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(queue_timeout_s=300, backoff_base_s=0), clock)
    try:
        coordinator = deployment.coordinator()
        first = deployment.start(coordinator)
        # A worker of an older version: it starts stages but sends no heartbeat.
        old = StageStarted(
            correlation_id=first.id, stage="aggregation", attempt=1, worker="aggregation@v1"
        )
        deployment.report(encode(old))
        consume_until(coordinator, 1)
        assert coordinator.get_run(first.id).stage("aggregation").status == "running"
        second = deployment.start(coordinator)

        clock.advance(HEARTBEAT_HORIZON_S + 1)
        coordinator.watchdog_tick()
        assert _waiting(coordinator, second.id) is None, "not reported as without a worker"

        # Its queue deadline is a plain timeout, as before heartbeats: the attempt is retried.
        clock.advance(300)
        assert coordinator.watchdog_tick() == 1
        aggregation = coordinator.get_run(second.id).stage("aggregation")
        assert (aggregation.attempt, aggregation.waiting) == (2, None)
        assert aggregation.history[0].outcome == "timed_out"
    finally:
        deployment.close()


def test_a_silent_worker_is_recorded_even_when_its_stage_start_cannot_be_applied(
    tmp_path: Path, clock: Clock
) -> None:
    deployment = Deployment(tmp_path, Policy(queue_timeout_s=300), clock)
    try:
        coordinator = deployment.coordinator()
        # Its run is gone (or never was here): the event is dead-lettered, yet the worker
        # showed it is alive, as before the bookkeeping rode on the event's transaction.
        started = StageStarted(
            correlation_id=uuid4(), stage="aggregation", attempt=1, worker="aggregation@v1"
        )
        deployment.report(encode(started))
        consume_until(coordinator, 1)
        assert [reason for reason, _ in deployment.dead_letters()] == ["UnknownRun"]
        assert coordinator.store.silent_stages() == {"aggregation"}
    finally:
        deployment.close()


def test_a_worker_with_heartbeats_is_not_a_silent_one(tmp_path: Path, clock: Clock) -> None:
    deployment = Deployment(tmp_path, Policy(queue_timeout_s=300), clock)
    try:
        coordinator = deployment.coordinator()
        run = deployment.start(coordinator)
        idle_worker(coordinator, clock.now)
        started = StageStarted(
            correlation_id=run.id, stage="aggregation", attempt=1, worker="aggregation@test"
        )
        deployment.report(encode(started))
        consume_until(coordinator, 1)
        assert coordinator.store.silent_stages() == set()
    finally:
        deployment.close()
