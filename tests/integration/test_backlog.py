"""Queue deadlines and backlogs, on the real coordinator loops, SQLite bus and run store, with
stage workers that send heartbeats: a backlog that one worker drains slower than the queue
deadline retries nothing, a stage without a live worker says so on the run, and a command the
bus delivered again (a worker stopped mid-stage) shows its deliveries on the attempt."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coordinator.api import RunOut
from coordinator.domain import Policy, Run
from coordinator.service import BackgroundLoops, Coordinator, LoopIntervals
from coordinator.store import RunStore, outbox
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import Stage
from shared.topology import CONTROL_TOPIC, build_topology, command_topic
from shared.worker import StageContext, StageResult, StageSpec, Worker
from tests.recipe_fixtures import echo_recipe, only
from tests.waiting import wait_until

LOCK_S = 5.0
# Small, so that a backlog of a few slow stages outlasts it several times over.
QUEUE_TIMEOUT_S = 1.0
STAGE_S = 0.6
RUNS = 6
HEARTBEAT_S = 0.1


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = LocalBlobStore(root / "blobs")
        self.blobs.upload_blob("datasets/echo/raw/a.txt", b"1\n2\n")
        store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
        store.create_tables()
        self.coordinator = Coordinator(
            bus=self.bus(),
            blobs=self.blobs,
            store=store,
            recipes=only(echo_recipe),
            policy=Policy(queue_timeout_s=QUEUE_TIMEOUT_S, backoff_base_s=0.1),
        )
        self.loops = BackgroundLoops(
            self.coordinator,
            LoopIntervals(
                consumer_wait_s=0.2,
                relay_interval_s=0.1,
                watchdog_interval_s=0.1,
                trigger_interval_s=1.0,
                group_interval_s=1.0,
            ),
        )
        self._workers: list[tuple[Worker, threading.Thread]] = []

    def bus(self) -> SqliteMessageBus:
        return SqliteMessageBus(
            self.root / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S)
        )

    def worker(self, handler: Callable[[StageContext], StageResult]) -> Worker:
        worker = Worker(
            StageSpec("aggregation", ("data",), "dataset", handler, cacheable=False),
            bus=self.bus(),
            blob_store=self.blobs,
            recipe_lookup=only(echo_recipe),
            lock_duration_s=LOCK_S,
            receive_wait_s=0.1,
            heartbeat_s=HEARTBEAT_S,
            shutdown_grace_s=5.0,
        )
        thread = threading.Thread(target=worker.run_forever, daemon=True)
        thread.start()
        self._workers.append((worker, thread))
        return worker

    def stop_worker(self, worker: Worker) -> None:
        for candidate, thread in self._workers:
            if candidate is worker:
                worker.stop()
                thread.join(60)
                assert not thread.is_alive()

    def runs(self) -> list[Run]:
        return self.coordinator.store.list_runs(limit=1000)

    def outbox_topics(self) -> list[str]:
        with self.coordinator.store._engine.connect() as conn:
            return [row.topic for row in conn.execute(outbox.select())]

    def close(self) -> None:
        for worker, thread in self._workers:
            worker.stop()
            thread.join(60)
            worker.close()
        self.loops.stop()
        self.coordinator.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    yield stack
    stack.close()


def slow(ctx: StageContext) -> StageResult:
    time.sleep(STAGE_S)
    return StageResult()


def stage_waiting(run: Run, stage: Stage) -> str | None:
    return run.stage(stage).waiting


def test_a_backlog_longer_than_the_queue_deadline_retries_nothing(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="coordinator.service")
    started = [stack.coordinator.start_run("echo", "datasets/echo/raw", {}) for _ in range(RUNS)]
    stack.loops.start()
    # One worker, one slot: the last command waits RUNS * STAGE_S, several queue deadlines.
    stack.worker(slow)

    def all_at_split() -> bool:
        runs = stack.runs()
        return all(run.stage("split").status == "queued" for run in runs)

    wait_until(all_at_split, "every run through aggregation")
    # No split worker at all: once their deadline passed, the runs say so.
    wait_until(
        lambda: all(
            stage_waiting(run, "split") == "no live worker for stage split" for run in stack.runs()
        ),
        "the runs to report no live split worker",
    )

    for run in stack.runs():
        aggregation = run.stage("aggregation")
        assert [(r.attempt, r.outcome) for r in aggregation.history] == [(1, "succeeded")]
        split = run.stage("split")
        assert (split.status, split.attempt, split.history) == ("queued", 1, ())
        assert RunOut.of(run).stages[1].waiting == "no live worker for stage split"
    topics = stack.outbox_topics()
    assert topics.count(command_topic("aggregation")) == RUNS, "one command per run"
    assert topics.count(command_topic("split")) == RUNS, "one command per run"
    assert CONTROL_TOPIC not in topics, "no CancelStage"
    postponed = [
        r.getMessage() for r in caplog.records if "waiting behind a backlog" in r.getMessage()
    ]
    assert postponed, "the deadline of a command in the backlog came and went"
    assert {run.id for run in stack.runs()} == {run.id for run in started}


def test_a_command_delivered_again_after_a_worker_stopped_shows_two_deliveries(
    stack: Stack,
) -> None:
    entered = threading.Event()

    def waits_for_cancel(ctx: StageContext) -> StageResult:
        entered.set()
        while True:
            ctx.recipe_context.check_cancelled()
            ctx.recipe_context.cancelled.wait(0.05)

    run = stack.coordinator.start_run("echo", "datasets/echo/raw", {})
    stack.loops.start()
    first = stack.worker(waits_for_cancel)
    assert entered.wait(60)
    # Stopped mid-stage: the worker gives the message back and the bus delivers it again.
    stack.stop_worker(first)
    stack.worker(slow)

    def aggregated() -> bool:
        return stack.coordinator.get_run(run.id).stage("aggregation").status == "succeeded"

    wait_until(aggregated, "aggregation to succeed on the second worker")
    done = stack.coordinator.get_run(run.id)

    aggregation = done.stage("aggregation")
    assert aggregation.attempt == 1, "the same attempt, not a retry"
    [record] = aggregation.history
    assert (record.outcome, record.deliveries) == ("succeeded", 2)
    view = RunOut.of(done).stages[0]
    assert view.deliveries == 2
    assert view.attempts[0].deliveries == 2
