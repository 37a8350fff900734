"""The stage-worker runtime on the real embedded bus and a real local blob store."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from recipes.base import RecipeContext
from services.aggregation import build_spec as aggregation_spec
from services.split import build_spec as split_spec
from shared.blobs.local import LocalBlobStore
from shared.bus.port import OutgoingMessage
from shared.bus.sqlite import SqliteMessageBus
from shared.errors import BlobNotFoundError
from shared.messages import (
    CancelStage,
    Message,
    RunStage,
    StageFailed,
    StageStarted,
    StageSucceeded,
    WorkerHeartbeat,
    decode,
    encode,
)
from shared.stage_logs import AttemptLog, failure_log_blob
from shared.topology import (
    CONTROL_TOPIC,
    COORDINATOR_SUBSCRIPTION,
    EVENTS_TOPIC,
    WORKER_SUBSCRIPTION,
    build_topology,
    command_topic,
)
from shared.worker import StageContext, StageResult, StageSpec, Worker
from tests.hostile import undecodable_messages
from tests.recipe_fixtures import echo_recipe, only
from tests.waiting import WAIT_S, wait_until

# Long enough that a busy machine settles a message before its lock lapses.
LOCK_S = 2.0


lookup = only(echo_recipe)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteMessageBus]:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S))
    yield bus
    bus.close()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "blobs")
    store.upload_blob("datasets/echo/raw/a.txt", b"1\n2\n")
    store.upload_blob("datasets/echo/raw/sub/b.txt", b"3\n")
    return store


def make_worker(
    spec: StageSpec, bus: SqliteMessageBus, blobs: LocalBlobStore, **options: Any
) -> Worker:
    """A worker on the test's bus and store; ``options``: the Worker's other settings."""
    return Worker(
        spec,
        bus=bus,
        blob_store=blobs,
        recipe_lookup=lookup,
        lock_duration_s=LOCK_S,
        **{"receive_wait_s": 0.2, **options},
    )


def send(bus: SqliteMessageBus, **fields: object) -> RunStage:
    command = RunStage.model_validate(
        {
            "correlation_id": uuid.uuid4(),
            "stage": "aggregation",
            "attempt": 1,
            "recipe": "echo",
            "inputs": {"data": "datasets/echo/raw"},
            **fields,
        }
    )
    bus.send_messages(command_topic(command.stage), [encode(command)])
    return command


def events(bus: SqliteMessageBus) -> list[Message]:
    received = bus.receive_messages(
        EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=50, max_wait_time=0.2
    )
    for message in received:
        bus.complete_message(message)
    return [decode(m.body, m.application_properties) for m in received]


def test_stage_runs_uploads_outputs_and_reports(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    worker = make_worker(aggregation_spec(), bus, blobs)
    command = send(bus)

    assert worker.process_next()

    started, succeeded = events(bus)
    assert isinstance(started, StageStarted) and started.correlation_id == command.correlation_id
    assert isinstance(succeeded, StageSucceeded) and not succeeded.cached
    assert succeeded.details["rows"] == 3
    assert succeeded.details["files"] == ["a.txt", "sub/b.txt"]
    prefix = succeeded.outputs["dataset"]
    assert prefix.startswith("artifacts/cache/aggregation/")
    assert blobs.download_blob(f"{prefix}/numbers.json").data == b"[1.0, 2.0, 3.0]"
    assert blobs.get_blob_properties(f"{prefix}/_manifest.json").size > 0
    assert (
        bus.receive_messages(command_topic("aggregation"), WORKER_SUBSCRIPTION, max_wait_time=0.1)
        == []
    ), "command completed"


def test_unchanged_inputs_hit_the_cache_and_changed_inputs_do_not(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    calls: list[str] = []
    base = split_spec()

    def counting(ctx: StageContext) -> StageResult:
        calls.append(str(ctx.command.correlation_id))
        return base.handler(ctx)

    aggregation = make_worker(aggregation_spec(), bus, blobs)
    send(bus)
    aggregation.process_next()
    dataset = next(e for e in events(bus) if isinstance(e, StageSucceeded)).outputs["dataset"]

    worker = make_worker(StageSpec("split", ("dataset",), "split", counting), bus, blobs)
    for attempt in (1, 2):
        send(bus, stage="split", attempt=attempt, inputs={"dataset": dataset})
        worker.process_next()
    send(bus, stage="split", inputs={"dataset": dataset}, params={"scale": 2.0})
    worker.process_next()

    results = [e for e in events(bus) if isinstance(e, StageSucceeded)]
    assert [r.cached for r in results] == [False, True, False]
    assert results[0].outputs == results[1].outputs != results[2].outputs
    assert len(calls) == 2


def test_a_forced_stage_runs_again_and_leaves_the_cached_entry_alone(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    worker = make_worker(aggregation_spec(), bus, blobs)
    send(bus)
    worker.process_next()
    send(bus, force=True)
    worker.process_next()
    send(bus)
    worker.process_next()

    first, forced, again = (e for e in events(bus) if isinstance(e, StageSucceeded))
    assert (first.cached, forced.cached, again.cached) == (False, False, True)
    assert forced.outputs != first.outputs == again.outputs


def test_bad_data_is_a_permanent_failure_naming_file_and_row(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    blobs.upload_blob("datasets/echo/raw/sub/b.txt", b"3\nfour\n")
    send(bus)
    make_worker(aggregation_spec(), bus, blobs).process_next()

    failed = events(bus)[-1]
    assert isinstance(failed, StageFailed)
    assert not failed.retryable
    assert failed.error == "sub/b.txt, row 2: 'four' is not a number"
    assert failed.error_type == "DataValidationError"
    # Nothing written for failed data but the attempt's log (its traceback, for the dashboard).
    log_blob = failure_log_blob(failed.correlation_id, "aggregation", 1)
    assert [b.name for b in blobs.list_blobs("artifacts/")] == [log_blob]
    log = blobs.download_blob(log_blob).data.decode()
    assert log.startswith("Traceback (most recent call last):")
    assert log.rstrip().endswith("DataValidationError: sub/b.txt, row 2: 'four' is not a number")


def test_unknown_recipe_and_invalid_params_fail_permanently_with_reasons(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    worker = make_worker(aggregation_spec(), bus, blobs)
    send(bus, recipe="nope")
    send(bus, params={"scale": "big", "colour": 1})
    worker.process_next()
    worker.process_next()

    unknown, invalid = [e for e in events(bus) if isinstance(e, StageFailed)]
    assert not unknown.retryable and "unknown recipe 'nope'" in unknown.error
    assert "echo" in unknown.error
    assert not invalid.retryable
    assert invalid.error.startswith("invalid params: ")
    assert "scale" in invalid.error and "colour" in invalid.error


def test_unexpected_errors_are_reported_retryable(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    def broken(ctx: StageContext) -> StageResult:
        raise OSError("disk hiccup")

    send(bus)
    make_worker(StageSpec("aggregation", ("data",), "dataset", broken), bus, blobs).process_next()

    failed = events(bus)[-1]
    assert isinstance(failed, StageFailed)
    assert failed.retryable and failed.error == "disk hiccup" and failed.error_type == "OSError"


def test_malformed_messages_are_dead_lettered_with_a_reason(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    topic = command_topic("aggregation")
    bus.send_messages(
        topic,
        [
            OutgoingMessage(
                body=b"not json",
                message_id="m1",
                application_properties={"message_type": "run_stage", "schema_version": 1},
            ),
            OutgoingMessage(
                body=b"{}",
                message_id="m2",
                application_properties={"message_type": "run_stage", "schema_version": 99},
            ),
        ],
    )
    worker = make_worker(aggregation_spec(), bus, blobs)
    worker.process_next()
    worker.process_next()

    dead = bus.receive_messages(
        topic, WORKER_SUBSCRIPTION, max_message_count=5, max_wait_time=0.2, dead_letter=True
    )
    assert [m.message_id for m in dead] == ["m1", "m2"]
    assert all(m.dead_letter_reason == "MalformedMessage" for m in dead)
    assert "not JSON" in (dead[0].dead_letter_error_description or "")
    assert "schema_version 99" in (dead[1].dead_letter_error_description or "")
    assert events(bus) == [], "nothing reported for a message that is not a command"


@pytest.mark.parametrize(
    "bad", undecodable_messages("run_stage"), ids=lambda message: message.message_id
)
def test_an_undecodable_command_between_valid_ones_is_dead_lettered_alone_and_at_once(
    bus: SqliteMessageBus, blobs: LocalBlobStore, bad: OutgoingMessage
) -> None:
    topic = command_topic("aggregation")
    first = send(bus)
    bus.send_messages(topic, [bad])
    second = send(bus)
    worker = make_worker(aggregation_spec(), bus, blobs)

    assert [worker.process_next() for _ in range(3)] == [True, True, True]

    succeeded = [e.correlation_id for e in events(bus) if isinstance(e, StageSucceeded)]
    assert succeeded == [first.correlation_id, second.correlation_id]
    [dead] = bus.receive_messages(
        topic, WORKER_SUBSCRIPTION, max_message_count=5, max_wait_time=0.2, dead_letter=True
    )
    assert (dead.message_id, dead.dead_letter_reason) == (bad.message_id, "MalformedMessage")
    assert not worker.process_next()


def test_lock_is_renewed_while_a_long_stage_runs(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    release = threading.Event()

    def slow(ctx: StageContext) -> StageResult:
        release.wait(10)
        return StageResult()

    send(bus)
    worker = make_worker(StageSpec("aggregation", ("data",), "dataset", slow), bus, blobs)
    thread = threading.Thread(target=worker.process_next)
    thread.start()
    time.sleep(LOCK_S * 3)
    # Without renewal the lock would have expired twice by now and the message be visible.
    stolen = bus.receive_messages(
        command_topic("aggregation"), WORKER_SUBSCRIPTION, max_wait_time=0.1
    )
    release.set()
    thread.join()

    assert stolen == []
    assert isinstance(events(bus)[-1], StageSucceeded)


def test_health_file_is_touched_by_every_receive(
    bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    from shared.healthcheck import main as healthcheck

    health = tmp_path / "alive"
    worker = make_worker(
        aggregation_spec(),
        bus,
        blobs,
        receive_wait_s=0.05,
        health_file=health,
    )
    assert healthcheck([str(health), "60"]) == 1, "no file yet: unhealthy"

    assert not worker.process_next()

    assert healthcheck([str(health), "60"]) == 0
    old = time.time() - 120
    import os

    os.utime(health, (old, old))
    assert healthcheck([str(health), "60"]) == 1, "stale: unhealthy"


def test_cancel_stage_reaches_the_recipe_of_the_attempt_in_flight(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    entered = threading.Event()
    seen: list[RecipeContext] = []

    def waits_for_cancel(ctx: StageContext) -> StageResult:
        seen.append(ctx.recipe_context)
        entered.set()
        while True:
            ctx.recipe_context.check_cancelled()
            ctx.recipe_context.cancelled.wait(0.05)

    spec = StageSpec(
        stage="aggregation", inputs=("data",), output="dataset", handler=waits_for_cancel
    )
    worker = make_worker(
        spec,
        bus,
        blobs,
        stage_max_workers=3,
    )
    command = send(bus)
    processing = threading.Thread(target=worker.process_next)
    processing.start()
    assert entered.wait(60)

    assert not worker.cancel_stage(command.correlation_id, command.attempt + 1), "another attempt"
    assert worker.cancel_stage(command.correlation_id, command.attempt)
    processing.join(60)

    assert not processing.is_alive()
    assert seen[0].max_workers == 3
    _, failed = events(bus)
    assert isinstance(failed, StageFailed)
    assert failed.error_type == "StageCancelledError" and not failed.retryable
    assert not worker.cancel_stage(command.correlation_id, command.attempt), "no longer in flight"


def _waits_for_cancel(entered: threading.Event) -> StageSpec:
    def handler(ctx: StageContext) -> StageResult:
        entered.set()
        while True:
            ctx.recipe_context.check_cancelled()
            ctx.recipe_context.cancelled.wait(0.05)

    return StageSpec(stage="aggregation", inputs=("data",), output="dataset", handler=handler)


def _cancel(bus: SqliteMessageBus, command: RunStage) -> None:
    request = CancelStage(
        correlation_id=command.correlation_id, stage=command.stage, attempt=command.attempt
    )
    bus.send_messages(CONTROL_TOPIC, [encode(request)])


def test_a_cancel_stage_on_run_control_stops_the_attempt_and_reaches_the_stage_hook(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    entered = threading.Event()
    hooked: list[CancelStage] = []
    spec = dataclasses.replace(_waits_for_cancel(entered), on_cancel=hooked.append)
    worker = make_worker(spec, bus, blobs)
    command = send(bus)
    processing = threading.Thread(target=worker.process_next)
    processing.start()
    assert entered.wait(60)

    _cancel(bus, command)
    assert worker.receive_control() == 1
    processing.join(60)

    assert not processing.is_alive()
    _, failed = events(bus)
    assert isinstance(failed, StageFailed) and failed.error_type == "StageCancelledError"
    assert [request.correlation_id for request in hooked] == [command.correlation_id]


def test_a_command_whose_attempt_was_cancelled_before_it_started_is_dropped_unrun(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    ran: list[StageContext] = []

    def handler(ctx: StageContext) -> StageResult:
        ran.append(ctx)
        return StageResult()

    worker = make_worker(StageSpec("aggregation", ("data",), "dataset", handler), bus, blobs)
    command = send(bus)
    _cancel(bus, command)
    # Another stage's cancel is not this worker's business.
    bus.send_messages(
        CONTROL_TOPIC,
        [encode(CancelStage(correlation_id=uuid.uuid4(), stage="train", attempt=1))],
    )
    assert worker.receive_control() == 2

    assert worker.process_next()
    assert ran == []
    assert events(bus) == []
    assert (
        bus.receive_messages(command_topic("aggregation"), WORKER_SUBSCRIPTION, max_wait_time=0.1)
        == []
    ), "completed, not redelivered"


def _run_until_stopped(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever)
    thread.start()
    return thread


def test_a_worker_stopped_mid_stage_abandons_the_message_instead_of_failing_the_run(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    entered = threading.Event()
    worker = make_worker(_waits_for_cancel(entered), bus, blobs)
    send(bus)
    running = _run_until_stopped(worker)
    assert entered.wait(60)

    worker.stop()
    running.join(60)

    assert not running.is_alive()
    assert [type(event) for event in events(bus)] == [StageStarted], "no StageFailed"
    [again] = bus.receive_messages(
        command_topic("aggregation"), WORKER_SUBSCRIPTION, max_wait_time=WAIT_S
    )
    assert again.delivery_count == 2, "given back at once, for the next worker"


def test_a_stage_that_ignores_the_stop_is_abandoned_after_the_grace_period(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    entered, release = threading.Event(), threading.Event()

    def stubborn(ctx: StageContext) -> StageResult:
        entered.set()
        release.wait(60)
        return StageResult()

    worker = make_worker(
        StageSpec("aggregation", ("data",), "dataset", stubborn),
        bus,
        blobs,
        shutdown_grace_s=0.2,
        name=f"stubborn-{uuid.uuid4()}",  # its threads, and only they, carry this name
    )
    send(bus)
    running = _run_until_stopped(worker)
    assert entered.wait(60)

    worker.stop()
    running.join(60)
    assert not running.is_alive(), "returned although the stage is still running"
    [again] = bus.receive_messages(
        command_topic("aggregation"), WORKER_SUBSCRIPTION, max_wait_time=WAIT_S
    )
    assert again.delivery_count == 2

    release.set()
    # The stage's thread runs to its end (and would publish, were it not abandoned).
    wait_until(
        lambda: (
            not any(thread.name.startswith(f"{worker.name}-") for thread in threading.enumerate())
        ),
        "the stage's thread to end",
    )
    assert [type(event) for event in events(bus)] == [StageStarted], "nothing after abandoning"


def test_a_worker_waiting_long_is_woken_by_a_command_a_cancel_and_its_stop(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    entered = threading.Event()
    # Its receives (commands and run-control) would wait past the hang guard: only the bus's
    # doorbell and the stop's interruption end them.
    worker = make_worker(
        _waits_for_cancel(entered),
        bus,
        blobs,
        receive_wait_s=WAIT_S * 2,
        shutdown_grace_s=0.2,
    )
    running = _run_until_stopped(worker)
    command = send(bus)
    assert entered.wait(WAIT_S)

    _cancel(bus, command)
    failed = wait_until(
        lambda: [e for e in events(bus) if isinstance(e, StageFailed)], "the cancelled stage"
    )
    assert failed[0].error_type == "StageCancelledError"

    worker.stop()
    running.join(WAIT_S)
    assert not running.is_alive(), "stopped although its receives were waiting"


def test_the_worker_warms_up_before_it_reports_alive_or_takes_a_message(
    bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    health = tmp_path / "alive"
    seen: list[tuple[bool, int]] = []
    release = threading.Event()
    send(bus)

    def warm() -> None:
        # Neither alive nor anything taken while warming up.
        seen.append((health.exists(), len(events(bus))))
        release.wait(WAIT_S)

    def failing_warm() -> None:
        raise RuntimeError("warm-up failures are logged, not fatal")

    spec = dataclasses.replace(aggregation_spec(), warm_up=(warm, failing_warm))
    worker = make_worker(
        spec,
        bus,
        blobs,
        receive_wait_s=0.05,
        health_file=health,
    )
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        wait_until(lambda: bool(seen), "the warm-up to start")
        assert seen == [(False, 0)]
        release.set()
        wait_until(health.exists, "the health file after the warm-up")
        taken: list[Message] = []

        def succeeded() -> bool:
            taken.extend(events(bus))
            return any(isinstance(e, StageSucceeded) for e in taken)

        wait_until(succeeded, "the command taken after the warm-up")
    finally:
        release.set()
        worker.stop()
        thread.join(WAIT_S)


def test_heartbeats_say_warming_during_the_warm_up_and_warm_as_soon_as_it_ends(
    bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    release = threading.Event()
    spec = dataclasses.replace(aggregation_spec(), warm_up=(lambda: release.wait(WAIT_S),))
    worker = make_worker(
        spec,
        bus,
        blobs,
        receive_wait_s=0.05,
        # Far longer than any wait here: the warm heartbeat must not wait for the interval.
        heartbeat_s=100 * WAIT_S,
    )
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    beats: list[WorkerHeartbeat] = []

    def heard(warming: bool) -> bool:
        beats.extend(e for e in events(bus) if isinstance(e, WorkerHeartbeat))
        return any(beat.warming is warming for beat in beats)

    try:
        wait_until(lambda: heard(True), "a heartbeat during the warm-up")
        assert beats[0].warming and beats[0].idle_s is None
        release.set()
        wait_until(lambda: heard(False), "a heartbeat once warm")
        assert [beat.warming for beat in beats] == [True, False]
    finally:
        release.set()
        worker.stop()
        thread.join(WAIT_S)
    assert not thread.is_alive()


def test_build_worker_warms_the_stage_functions_of_lazy_recipes_unless_told_not_to(
    tmp_path: Path,
) -> None:
    from shared.recipe import LazyFunction
    from shared.recipe_registry import get_recipe
    from shared.service import WorkerSettings, build_worker

    modules = ["tests.lazy_recipe_fixture"]
    lazy_split = get_recipe("lazy_echo", modules).split
    assert isinstance(lazy_split, LazyFunction)
    off = WorkerSettings(state_dir=tmp_path, recipe_modules=modules, warm_up=False)
    assert build_worker(split_spec(), off).spec.warm_up == ()

    on = WorkerSettings(state_dir=tmp_path, recipe_modules=modules, warm_up=True)
    worker = build_worker(split_spec(), on)
    assert worker.spec.warm_up
    worker.warm_up()
    assert lazy_split._function is not None


def test_a_running_attempts_log_is_written_as_it_goes_and_kept_whole_at_its_end(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    """The dashboard's live tail: what the attempt's thread logs reaches its log blob while it
    runs; another thread's lines do not; a failure's traceback ends it."""
    steps = logging.getLogger("recipes.live")
    release = threading.Event()

    def logs_then_waits(ctx: StageContext) -> StageResult:
        steps.warning("epoch 1 of 2 done")
        other = threading.Thread(target=steps.warning, args=("from another thread",))
        other.start()
        other.join()
        assert release.wait(WAIT_S)
        steps.warning("epoch 2 of 2 done")
        raise RuntimeError("diverged at epoch 2")

    spec = StageSpec("aggregation", ("data",), "dataset", logs_then_waits)
    worker = make_worker(
        spec,
        bus,
        blobs,
        attempt_log_s=0.05,
    )
    command = send(bus)
    blob = failure_log_blob(command.correlation_id, "aggregation", 1)

    def logged() -> str:
        try:
            return blobs.download_blob(blob).data.decode()
        except BlobNotFoundError:
            return ""

    processing = threading.Thread(target=worker.process_next)
    processing.start()
    try:
        wait_until(lambda: "epoch 1 of 2 done" in logged(), "the live log to be written")
        assert processing.is_alive()
        assert "epoch 2" not in logged() and "from another thread" not in logged()
    finally:
        release.set()
        processing.join(WAIT_S)

    final = logged()
    assert final.index("epoch 1 of 2 done") < final.index("epoch 2 of 2 done")
    assert final.rstrip().endswith("RuntimeError: diverged at epoch 2")
    assert "from another thread" not in final
    assert not any(isinstance(h, AttemptLog) for h in logging.getLogger().handlers)


def test_a_succeeded_attempt_keeps_its_log(bus: SqliteMessageBus, blobs: LocalBlobStore) -> None:
    def logs(ctx: StageContext) -> StageResult:
        logging.getLogger("recipes.live").warning("42 rows read")
        return StageResult()

    worker = make_worker(StageSpec("aggregation", ("data",), "dataset", logs), bus, blobs)
    command = send(bus)
    assert worker.process_next()
    kept = blobs.download_blob(failure_log_blob(command.correlation_id, "aggregation", 1))
    assert "WARNING recipes.live: 42 rows read" in kept.data.decode()
