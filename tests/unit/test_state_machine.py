"""The run state machine, exercised as a pure function: no database, no bus, no clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from coordinator.domain import (
    CancelRun,
    DeadlineExpired,
    Decision,
    InvalidTransition,
    NoLiveWorker,
    Policy,
    RetryRun,
    Run,
    RunNotFound,
    StartRun,
    WorkerSeen,
    decide,
)
from shared.messages import (
    STAGES,
    CancelStage,
    RunStage,
    Stage,
    StageFailed,
    StageProgress,
    StageStarted,
    StageSucceeded,
)

RUN_ID = UUID("12345678-1234-5678-1234-567812345678")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(
    max_attempts=3,
    backoff_base_s=2.0,
    backoff_max_s=5.0,
    queue_timeout_s=60.0,
    run_timeout_s=100.0,
    run_timeout_overrides_s={"train": 1000.0},
)
OUTPUTS: dict[Stage, dict[str, str]] = {
    "aggregation": {"dataset": "datasets/r/aggregated"},
    "split": {"split": "datasets/r/split"},
    "train": {"model": "models/r/model"},
    "register": {},
    "tag": {},
}
DETAILS: dict[Stage, dict[str, object]] = {
    "register": {"model_name": "state_identifier", "model_version": 7},
    "tag": {"promoted": True, "reason": "silhouette 0.61 beats champion v6 (0.55)"},
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start(params: dict[str, object] | None = None) -> Decision:
    message = StartRun(RUN_ID, "state_identifier", "raw/set1", params or {"n_clusters": 3})
    return decide(None, message, now=T0, policy=POLICY)


def started(stage: Stage, attempt: int = 1, delivery_count: int = 1) -> StageStarted:
    return StageStarted(
        correlation_id=RUN_ID,
        stage=stage,
        attempt=attempt,
        worker=f"{stage}-worker",
        delivery_count=delivery_count,
        occurred_at=T0,
    )


def succeeded(stage: Stage, attempt: int = 1, occurred_at: datetime = T0) -> StageSucceeded:
    return StageSucceeded(
        correlation_id=RUN_ID,
        stage=stage,
        attempt=attempt,
        outputs=OUTPUTS[stage],
        metrics={"silhouette": 0.61} if stage == "train" else {},
        details=DETAILS.get(stage, {}),
        duration_s=1.5,
        occurred_at=occurred_at,
    )


def failed(stage: Stage, attempt: int = 1, *, retryable: bool) -> StageFailed:
    return StageFailed(
        correlation_id=RUN_ID,
        stage=stage,
        attempt=attempt,
        error="raw/bad.csv, row 7: value 'x' is not a number",
        error_type="DataValidationError",
        retryable=retryable,
        occurred_at=T0,
    )


def apply(run: Run, message: object, seconds: float = 0.0) -> Decision:
    return decide(run, message, now=at(seconds), policy=POLICY)  # type: ignore[arg-type]


def run_until(stage: Stage) -> Run:
    """A run whose earlier stages succeeded and whose ``stage`` attempt 1 is queued."""
    run = start().run
    for earlier in STAGES[: STAGES.index(stage)]:
        run = apply(run, succeeded(earlier)).run
    return run


def assert_ignored(run: Run, message: object, seconds: float = 0.0) -> None:
    decision = apply(run, message, seconds)
    assert decision.run == run
    assert decision.commands == []
    assert decision.notes and decision.notes[0].startswith("ignored")


# --- start and the happy path ------------------------------------------------------------


def test_start_queues_aggregation_with_the_raw_data_as_input() -> None:
    decision = start()

    run = decision.run
    assert run.id == RUN_ID
    assert run.status == "queued"
    assert run.created_at == run.updated_at == T0
    assert [s.stage for s in run.stages] == list(STAGES)
    assert [s.status for s in run.stages] == ["queued", "pending", "pending", "pending", "pending"]
    aggregation = run.stage("aggregation")
    assert (aggregation.attempt, aggregation.queued_at) == (1, T0)
    assert aggregation.deadline == at(POLICY.queue_timeout_s)
    [scheduled] = decision.commands
    assert scheduled.not_before is None
    command = scheduled.command
    assert isinstance(command, RunStage)
    assert (command.stage, command.attempt, command.recipe) == (
        "aggregation",
        1,
        "state_identifier",
    )
    assert command.correlation_id == RUN_ID
    assert command.inputs == {"data": "raw/set1"}
    assert command.params == {"n_clusters": 3}
    assert command.message_id == f"{RUN_ID}:aggregation:1"
    assert command.traceparent is not None and RUN_ID.hex in command.traceparent


def test_happy_path_chains_every_stage_outputs_into_the_next_inputs() -> None:
    run = start().run
    expected_inputs: dict[str, str] = {"data": "raw/set1"}
    for index, stage in enumerate(STAGES):
        run = apply(run, started(stage), seconds=index * 10 + 1).run
        assert run.status == "running"
        assert run.stage(stage).status == "running"
        decision = apply(run, succeeded(stage, occurred_at=at(index * 10 + 5)), index * 10 + 6)
        run = decision.run
        assert run.stage(stage).status == "succeeded"
        expected_inputs.update(OUTPUTS[stage])
        if stage == "tag":
            assert decision.commands == []
        else:
            [scheduled] = decision.commands
            assert isinstance(scheduled.command, RunStage)
            assert scheduled.command.stage == STAGES[index + 1]
            assert scheduled.command.attempt == 1
            assert scheduled.command.inputs == expected_inputs
            assert scheduled.command.params == {"n_clusters": 3}

    assert run.status == "succeeded"
    assert run.finished_at == at(46)
    assert run.error is None
    assert run.outputs == {
        "dataset": "datasets/r/aggregated",
        "split": "datasets/r/split",
        "model": "models/r/model",
    }
    assert run.metrics == {"silhouette": 0.61}
    assert run.model is not None
    assert run.model.model_dump() == {
        "name": "state_identifier",
        "version": "7",
        "champion": True,
        "reason": "silhouette 0.61 beats champion v6 (0.55)",
    }
    train = run.stage("train")
    assert train.finished_at == at(25)
    assert [(r.attempt, r.outcome) for r in train.history] == [(1, "succeeded")]


def test_started_sets_the_stage_run_timeout_on_the_coordinator_clock() -> None:
    run = run_until("train")

    run = apply(run, started("train"), seconds=30).run

    train = run.stage("train")
    assert train.status == "running"
    assert train.started_at == T0
    assert train.worker == "train-worker"
    assert train.deadline == at(30 + 1000)
    assert run.deadline == train.deadline


def test_redelivered_start_restarts_the_deadline_but_keeps_the_start_time() -> None:
    run = apply(run_until("split"), started("split"), seconds=1).run

    run = apply(run, started("split", delivery_count=2), seconds=50).run

    split = run.stage("split")
    assert split.started_at == T0
    assert split.deadline == at(50 + 100)


def test_success_without_a_start_event_is_accepted_and_dates_the_start_from_the_duration() -> None:
    run = start().run

    decision = apply(run, succeeded("aggregation", occurred_at=at(10)), seconds=11)

    aggregation = decision.run.stage("aggregation")
    assert aggregation.status == "succeeded"
    assert aggregation.started_at == at(10 - 1.5)
    assert [c.command.stage for c in decision.commands] == ["split"]


def test_model_is_absent_until_register_succeeds() -> None:
    run = run_until("register")
    assert run.model is None

    run = apply(run, succeeded("register")).run

    assert run.model is not None
    assert (run.model.name, run.model.version, run.model.champion) == (
        "state_identifier",
        "7",
        None,
    )


def test_the_same_input_gives_the_same_decision() -> None:
    run = run_until("train")
    assert apply(run, failed("train", retryable=True)) == apply(
        run, failed("train", retryable=True)
    )


def test_run_survives_a_json_round_trip() -> None:
    run = apply(
        apply(run_until("train"), started("train")).run, failed("train", retryable=True)
    ).run

    assert Run.model_validate(run.model_dump(mode="json")) == run


# --- failures and retries ----------------------------------------------------------------


def test_retryable_failure_retries_the_same_stage_with_exponential_backoff() -> None:
    run = apply(run_until("train"), started("train")).run

    first = apply(run, failed("train", 1, retryable=True), seconds=10)
    [retry] = first.commands
    assert isinstance(retry.command, RunStage)
    assert (retry.command.stage, retry.command.attempt) == ("train", 2)
    assert retry.not_before == at(10 + 2)
    assert retry.command.inputs == {
        "data": "raw/set1",
        **OUTPUTS["aggregation"],
        **OUTPUTS["split"],
    }
    train = first.run.stage("train")
    assert (train.status, train.attempt, train.error) == ("queued", 2, None)
    assert train.deadline == at(10 + 2 + POLICY.queue_timeout_s)
    assert first.run.status == "running"

    second = apply(first.run, failed("train", 2, retryable=True), seconds=20)
    [retry] = second.commands
    assert retry.command.attempt == 3
    assert retry.not_before == at(20 + 4)

    history = second.run.stage("train").history
    assert [(r.attempt, r.outcome) for r in history] == [(1, "failed"), (2, "failed")]
    assert history[0].error is not None and "row 7" in history[0].error
    # The worker's time of failure, not the time the coordinator heard of it.
    assert history[0].finished_at == T0


def test_retryable_failure_fails_the_run_once_attempts_are_exhausted() -> None:
    run = run_until("train")
    for attempt in (1, 2):
        run = apply(run, failed("train", attempt, retryable=True)).run

    decision = apply(run, failed("train", 3, retryable=True), seconds=30)

    assert decision.commands == []
    run = decision.run
    assert run.status == "failed"
    assert run.finished_at == at(30)
    assert (
        run.error == "train failed after 3 attempts: raw/bad.csv, row 7: value 'x' is not a number"
    )
    train = run.stage("train")
    assert (train.status, train.attempt, train.deadline) == ("failed", 3, None)
    assert [r.outcome for r in train.history] == ["failed"] * 3
    assert run.stage("register").status == "pending"


def test_backoff_doubles_and_is_capped() -> None:
    assert [POLICY.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [2.0, 4.0, 5.0, 5.0]


def test_permanent_failure_fails_the_run_at_once_with_the_worker_error() -> None:
    run = apply(start().run, started("aggregation")).run

    decision = apply(run, failed("aggregation", retryable=False), seconds=3)

    assert decision.commands == []
    assert decision.run.status == "failed"
    assert decision.run.error == "aggregation failed: raw/bad.csv, row 7: value 'x' is not a number"
    aggregation = decision.run.stage("aggregation")
    assert aggregation.status == "failed"
    assert aggregation.error == decision.run.error
    assert aggregation.finished_at == T0
    assert [r.outcome for r in aggregation.history] == ["failed"]


# --- deadlines ---------------------------------------------------------------------------


def test_queue_deadline_retries_a_stage_nobody_picked_up() -> None:
    run = run_until("split")

    decision = apply(run, DeadlineExpired(RUN_ID, "split", 1), seconds=POLICY.queue_timeout_s)

    stop, retry = decision.commands
    assert isinstance(stop.command, CancelStage) and stop.command.attempt == 1
    assert isinstance(retry.command, RunStage)
    assert (retry.command.stage, retry.command.attempt) == ("split", 2)
    assert retry.not_before == at(POLICY.queue_timeout_s + 2)
    [record] = decision.run.stage("split").history
    assert (record.outcome, record.error) == ("timed_out", "split did not start within 60 s")
    assert record.finished_at == at(POLICY.queue_timeout_s)


def test_run_deadline_retries_then_fails_naming_the_stage_and_the_timeout() -> None:
    run = run_until("train")
    now = 0.0
    for attempt in (1, 2, 3):
        run = apply(run, started("train", attempt), seconds=now).run
        now += 1000
        decision = apply(run, DeadlineExpired(RUN_ID, "train", attempt), seconds=now)
        run = decision.run
        # The given-up attempt is stopped (an Azure ML job would run on, costing GPU time),
        # then the next one sent.
        sent = [(type(c.command).__name__, c.command.attempt) for c in decision.commands]
        expected = [("CancelStage", attempt)]
        if attempt < 3:
            expected.append(("RunStage", attempt + 1))
        assert sent == expected
        stop = decision.commands[0].command
        assert isinstance(stop, CancelStage)
        assert stop.reason == "train did not report within 1000 s"

    assert run.status == "failed"
    assert run.error == "train did not report within 1000 s after 3 attempts"
    assert [r.outcome for r in run.stage("train").history] == ["timed_out"] * 3


def worker(
    checked_at: float, idle_since: float | None, *, expires_at: float = 10_000.0
) -> WorkerSeen:
    idle = None if idle_since is None else at(idle_since)
    return WorkerSeen("split@host", at(checked_at), idle, at(expires_at))


def test_queue_deadline_waits_while_the_live_workers_are_busy_with_a_backlog() -> None:
    run = run_until("split")
    busy = (worker(59, None), worker(58, idle_since=None))

    decision = apply(run, DeadlineExpired(RUN_ID, "split", 1, busy), POLICY.queue_timeout_s)

    assert decision.commands == [], "no retry, no CancelStage"
    split = decision.run.stage("split")
    assert (split.status, split.attempt, split.history) == ("queued", 1, ())
    assert split.deadline == at(2 * POLICY.queue_timeout_s)
    assert split.waiting == "waiting behind a backlog: 2 live split workers, all busy"
    # Started at last: the note goes, and nothing was lost on the way.
    started_run = apply(decision.run, started("split"), 500).run
    assert started_run.stage("split").waiting is None


def test_queue_deadline_with_no_live_worker_waits_and_says_so() -> None:
    run = run_until("split")
    gone = (worker(1, idle_since=0, expires_at=30),)

    for workers in ((), gone):
        decision = apply(run, DeadlineExpired(RUN_ID, "split", 1, workers), POLICY.queue_timeout_s)

        assert decision.commands == []
        split = decision.run.stage("split")
        assert (split.status, split.attempt) == ("queued", 1)
        assert split.waiting == "no live worker for stage split"
        assert "no live worker for stage split" in decision.notes[0]


def test_no_live_worker_is_said_at_once_keeping_the_deadline_and_only_for_a_queued_attempt() -> (
    None
):
    run = run_until("split")
    deadline = run.stage("split").deadline

    decision = apply(run, NoLiveWorker(RUN_ID, "split", 1), 40)

    assert decision.commands == []
    split = decision.run.stage("split")
    assert (split.status, split.attempt, split.deadline) == ("queued", 1, deadline)
    assert split.waiting == "no live worker for stage split"
    assert decision.run.updated_at == at(40)
    assert_ignored(decision.run, NoLiveWorker(RUN_ID, "split", 1), 50)  # said already
    assert_ignored(run, NoLiveWorker(RUN_ID, "split", 2), 40)  # not the current attempt
    assert_ignored(run, NoLiveWorker(RUN_ID, "train", 1), 40)  # not the current stage
    running = apply(run, started("split"), 30).run
    assert_ignored(running, NoLiveWorker(RUN_ID, "split", 1), 40)
    # A worker that turns up and starts it clears the note.
    assert apply(decision.run, started("split"), 60).run.stage("split").waiting is None


def test_queue_deadline_fires_once_a_live_worker_found_nothing_to_take_for_the_timeout() -> None:
    run = run_until("split")
    timeout = POLICY.queue_timeout_s

    # Idle since before the command was queued, but seen idle for less than the timeout since.
    early = apply(run, DeadlineExpired(RUN_ID, "split", 1, (worker(50, 0),)), timeout)
    assert early.commands == []
    assert early.run.stage("split").deadline == at(timeout + timeout - 50)
    assert early.run.stage("split").waiting is None

    late = apply(early.run, DeadlineExpired(RUN_ID, "split", 1, (worker(110, 0),)), 110)
    stop, retry = late.commands
    assert isinstance(stop.command, CancelStage) and isinstance(retry.command, RunStage)
    [record] = late.run.stage("split").history
    assert (record.outcome, record.error) == ("timed_out", "split did not start within 60 s")


def test_an_idle_worker_counts_from_when_the_command_became_available() -> None:
    run = apply(run_until("split"), failed("split", retryable=True), 100).run
    split = run.stage("split")
    assert split.not_before == at(102)
    assert split.deadline is not None
    due = (split.deadline - T0).total_seconds()

    # Idle since long ago, last seen idle 30 s after the retry became available: not enough.
    decision = apply(run, DeadlineExpired(RUN_ID, "split", 2, (worker(132, 0),)), due)

    assert decision.commands == []


def test_deliveries_of_a_redelivered_command_are_recorded_with_the_attempt() -> None:
    run = run_until("split")
    run = apply(run, started("split", delivery_count=1)).run
    decision = apply(run, started("split", delivery_count=2), 5)
    assert decision.notes == ["split attempt 1 started on split-worker (delivery 2 of its command)"]
    assert decision.run.stage("split").deliveries == 2

    done = apply(decision.run, succeeded("split").model_copy(update={"delivery_count": 2}), 9).run

    [record] = done.stage("split").history
    assert (record.outcome, record.deliveries) == ("succeeded", 2)
    assert done.stage("train").deliveries == 0


def test_deliveries_reach_the_record_of_a_success_without_a_start_event() -> None:
    run = run_until("split")

    done = apply(run, succeeded("split").model_copy(update={"delivery_count": 3})).run

    assert done.stage("split").history[-1].deliveries == 3


def test_deadline_that_is_not_due_yet_is_ignored() -> None:
    run = apply(run_until("train"), started("train"), seconds=10).run

    assert_ignored(run, DeadlineExpired(RUN_ID, "train", 1), seconds=10 + 999)


def test_deadline_of_an_older_attempt_or_another_stage_is_ignored() -> None:
    run = apply(run_until("train"), failed("train", 1, retryable=True)).run

    assert_ignored(run, DeadlineExpired(RUN_ID, "train", 1), seconds=10_000)
    assert_ignored(run, DeadlineExpired(RUN_ID, "split", 1), seconds=10_000)


def progress(stage: Stage, attempt: int = 1, **details: str) -> StageProgress:
    return StageProgress(correlation_id=RUN_ID, stage=stage, attempt=attempt, details=details)


def test_progress_of_a_deferred_attempt_is_recorded_without_moving_the_run() -> None:
    run = apply(run_until("train"), started("train")).run

    decision = apply(run, progress("train", compute_job_id="job-1", compute_backend="azureml"), 3)

    assert decision.commands == []
    train = decision.run.stage("train")
    assert train.details == {"compute_job_id": "job-1", "compute_backend": "azureml"}
    assert (train.status, train.deadline) == ("running", run.stage("train").deadline)
    assert decision.run.updated_at == at(3)


def test_progress_of_another_attempt_or_a_finished_run_is_ignored() -> None:
    run = apply(run_until("train"), started("train")).run
    assert_ignored(run, progress("train", attempt=2, compute_job_id="job-2"))
    assert_ignored(run, progress("split", compute_job_id="job-2"))
    cancelled = apply(run, CancelRun(RUN_ID)).run
    assert_ignored(cancelled, progress("train", compute_job_id="job-1"))


# --- cancel and retry --------------------------------------------------------------------


def test_cancel_stops_the_run_and_its_current_stage() -> None:
    run = apply(run_until("train"), started("train")).run

    decision = apply(run, CancelRun(RUN_ID), seconds=7)

    # The train attempt in flight is told to stop (an Azure ML job is cancelled).
    [stop] = [scheduled.command for scheduled in decision.commands]
    assert isinstance(stop, CancelStage)
    assert (stop.stage, stop.attempt, stop.correlation_id) == ("train", 1, RUN_ID)
    run = decision.run
    assert (run.status, run.finished_at, run.deadline) == ("cancelled", at(7), None)
    train = run.stage("train")
    assert (train.status, train.finished_at, train.deadline) == ("cancelled", at(7), None)
    assert [r.outcome for r in train.history] == ["cancelled"]
    assert run.stage("split").status == "succeeded"


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_of_a_finished_run_is_refused(status: str) -> None:
    run = finished_run(status)

    with pytest.raises(InvalidTransition, match=f"cannot cancel run {RUN_ID}: it is {status}"):
        apply(run, CancelRun(RUN_ID))


def test_events_after_cancel_are_ignored() -> None:
    run = apply(apply(run_until("train"), started("train")).run, CancelRun(RUN_ID)).run

    assert_ignored(run, succeeded("train"))
    assert_ignored(run, failed("train", retryable=True))
    assert_ignored(run, DeadlineExpired(RUN_ID, "train", 1), seconds=10_000)


def test_retry_of_a_failed_run_requeues_the_failed_stage_and_keeps_its_history() -> None:
    run = run_until("train")
    for attempt in (1, 2, 3):
        run = apply(run, failed("train", attempt, retryable=True)).run
    assert run.status == "failed"

    decision = apply(run, RetryRun(RUN_ID), seconds=100)

    [scheduled] = decision.commands
    assert scheduled.not_before is None
    assert isinstance(scheduled.command, RunStage)
    assert (scheduled.command.stage, scheduled.command.attempt) == ("train", 4)
    assert scheduled.command.inputs == {
        "data": "raw/set1",
        **OUTPUTS["aggregation"],
        **OUTPUTS["split"],
    }
    run = decision.run
    assert (run.status, run.error, run.finished_at) == ("running", None, None)
    train = run.stage("train")
    assert (train.status, train.attempt, train.error) == ("queued", 4, None)
    assert len(train.history) == 3
    assert [s.status for s in run.stages] == [
        "succeeded",
        "succeeded",
        "queued",
        "pending",
        "pending",
    ]


def test_retry_gives_the_stage_a_fresh_attempt_budget() -> None:
    run = run_until("train")
    for attempt in (1, 2, 3):
        run = apply(run, failed("train", attempt, retryable=True)).run
    run = apply(run, RetryRun(RUN_ID)).run

    decision = apply(run, failed("train", 4, retryable=True))

    assert [c.command.attempt for c in decision.commands] == [5]
    run = apply(decision.run, failed("train", 5, retryable=True)).run
    run = apply(run, failed("train", 6, retryable=True)).run
    assert run.status == "failed"
    assert run.error is not None and run.error.startswith("train failed after 3 attempts")


def test_retry_of_a_cancelled_run_requeues_the_cancelled_stage() -> None:
    run = apply(run_until("split"), CancelRun(RUN_ID)).run

    decision = apply(run, RetryRun(RUN_ID))

    assert [(c.command.stage, c.command.attempt) for c in decision.commands] == [("split", 2)]
    assert decision.run.status == "running"
    assert decision.run.stage("split").status == "queued"


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_retry_is_refused_unless_the_run_failed_or_was_cancelled(status: str) -> None:
    run = {
        "queued": start().run,
        "running": apply(start().run, started("aggregation")).run,
        "succeeded": finished_run("succeeded"),
    }[status]

    with pytest.raises(InvalidTransition, match=f"cannot retry run {RUN_ID}: it is {status}"):
        apply(run, RetryRun(RUN_ID))


# --- stale, duplicate and unknown inputs -------------------------------------------------


def test_duplicate_success_is_ignored() -> None:
    run = apply(start().run, succeeded("aggregation")).run

    assert_ignored(run, succeeded("aggregation"))


def test_duplicate_start_run_is_ignored() -> None:
    run = start().run

    assert_ignored(run, StartRun(RUN_ID, "other", "raw/other", {}))


def test_events_of_a_stale_attempt_are_ignored() -> None:
    run = apply(run_until("train"), failed("train", 1, retryable=True)).run

    assert_ignored(run, started("train", 1))
    assert_ignored(run, failed("train", 1, retryable=True))


def test_events_of_an_attempt_not_yet_issued_are_ignored() -> None:
    run = run_until("train")

    assert_ignored(run, succeeded("train", 2))
    assert_ignored(run, started("train", 2))


def test_events_of_a_stage_that_is_not_current_are_ignored() -> None:
    run = run_until("train")

    assert_ignored(run, succeeded("tag"))
    assert_ignored(run, started("register"))
    assert_ignored(run, failed("aggregation", retryable=False))


def test_events_of_a_finished_run_are_ignored() -> None:
    run = finished_run("succeeded")

    assert_ignored(run, succeeded("tag"))
    assert_ignored(run, started("tag", 2))


def test_late_success_of_an_older_attempt_of_the_current_stage_is_accepted() -> None:
    run = apply(run_until("train"), started("train")).run
    run = apply(run, DeadlineExpired(RUN_ID, "train", 1), seconds=1000).run
    assert run.stage("train").attempt == 2

    decision = apply(run, succeeded("train", 1, occurred_at=at(1001)), seconds=1002)

    assert [(c.command.stage, c.command.attempt) for c in decision.commands] == [("register", 1)]
    train = decision.run.stage("train")
    assert (train.status, train.attempt, train.outputs) == ("succeeded", 2, OUTPUTS["train"])
    # One record per attempt: the one that timed out did succeed, the next was superseded.
    assert [(r.attempt, r.outcome) for r in train.history] == [(1, "succeeded"), (2, "superseded")]
    first = train.history[0]
    assert (first.queued_at, first.finished_at) == (train.queued_at, at(1001))
    assert train.queued_at is not None and train.started_at is not None
    assert train.queued_at <= train.started_at
    assert_ignored(decision.run, succeeded("train", 2))


def test_an_event_for_a_run_that_does_not_exist_raises_run_not_found() -> None:
    with pytest.raises(RunNotFound):
        decide(None, succeeded("aggregation"), now=T0, policy=POLICY)
    with pytest.raises(RunNotFound):
        decide(None, CancelRun(RUN_ID), now=T0, policy=POLICY)


def test_policy_refuses_zero_attempts() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        Policy(max_attempts=0)


def finished_run(status: str) -> Run:
    if status == "succeeded":
        run = run_until("tag")
        return apply(run, succeeded("tag")).run
    if status == "failed":
        return apply(start().run, failed("aggregation", retryable=False)).run
    return apply(start().run, CancelRun(RUN_ID)).run


# --- retry after cancel, and a history that stays truthful -------------------------------


def started_at(stage: Stage, attempt: int, occurred_at: datetime) -> StageStarted:
    return started(stage, attempt).model_copy(update={"occurred_at": occurred_at})


def test_retry_after_cancel_is_a_fresh_attempt_and_the_cancelled_ones_result_is_never_adopted() -> (
    None
):
    run = apply(run_until("train"), started_at("train", 1, at(10)), seconds=10).run
    run = apply(run, CancelRun(RUN_ID), seconds=20).run
    # The cancelled attempt reports anyway (it finished before it saw the cancel).
    assert_ignored(run, succeeded("train", 1, occurred_at=at(21)), seconds=21)

    decision = apply(run, RetryRun(RUN_ID), seconds=30)

    assert [(c.command.stage, c.command.attempt) for c in decision.commands] == [("train", 2)]
    run = decision.run
    # Still late, now that attempt 2 is queued: neither its success nor its failure counts.
    assert_ignored(run, succeeded("train", 1, occurred_at=at(31)), seconds=31)
    assert_ignored(run, failed("train", 1, retryable=True), seconds=31)
    assert_ignored(run, started("train", 1), seconds=31)
    # The worker's clock runs behind the coordinator's: the attempt still starts after it was
    # queued.
    run = apply(run, started_at("train", 2, at(29)), seconds=32).run
    train = run.stage("train")
    assert (train.status, train.attempt, train.queued_at, train.started_at) == (
        "running",
        2,
        at(30),
        at(30),
    )
    run = apply(run, succeeded("train", 2, occurred_at=at(40)), seconds=40).run
    train = run.stage("train")
    assert [(r.attempt, r.outcome) for r in train.history] == [(1, "cancelled"), (2, "succeeded")]
    assert (train.history[1].queued_at, train.history[1].started_at) == (at(30), at(30))
    assert run.status == "running" and run.stage("register").status == "queued"


def test_cancel_and_retry_again_and_again_never_reuses_an_attempt_number() -> None:
    run = run_until("split")
    issued = [1]
    for round_ in range(3):
        run = apply(run, CancelRun(RUN_ID), seconds=10 * round_ + 1).run
        decision = apply(run, RetryRun(RUN_ID), seconds=10 * round_ + 2)
        issued += [c.command.attempt for c in decision.commands]
        run = decision.run
    split = run.stage("split")
    assert issued == [1, 2, 3, 4]
    assert [(r.attempt, r.outcome) for r in split.history] == [
        (1, "cancelled"),
        (2, "cancelled"),
        (3, "cancelled"),
    ]
    assert (split.status, split.attempt) == ("queued", 4)


def test_a_late_success_from_before_a_manual_retry_is_not_adopted() -> None:
    run = apply(run_until("train"), started("train")).run
    run = apply(run, DeadlineExpired(RUN_ID, "train", 1), seconds=1000).run  # attempt 2 queued
    run = apply(run, CancelRun(RUN_ID), seconds=1001).run
    run = apply(run, RetryRun(RUN_ID), seconds=1002).run  # attempt 3, a fresh budget
    assert run.stage("train").attempt == 3

    assert_ignored(run, succeeded("train", 1, occurred_at=at(1003)), seconds=1003)
    assert_ignored(run, succeeded("train", 2, occurred_at=at(1003)), seconds=1003)


def test_a_late_failure_of_a_timed_out_attempt_is_ignored() -> None:
    run = apply(run_until("train"), started("train")).run
    run = apply(run, DeadlineExpired(RUN_ID, "train", 1), seconds=1000).run

    assert_ignored(run, failed("train", 1, retryable=False), seconds=1001)


@pytest.mark.parametrize("seed", range(40))
def test_history_stays_truthful_whatever_the_order_of_inputs(seed: int) -> None:
    """Random inputs (stale, duplicate, early, late events; deadlines; cancels and retries) with
    worker clocks up to 5 s behind: after each, one record per attempt number in order, none
    beyond the current attempt, no attempt started before it was queued or finished before it
    started, no command id issued twice, and a cancelled attempt never succeeds."""
    rng = random.Random(seed)
    run = start().run
    now = 0.0
    issued: set[tuple[str, int]] = {("aggregation", 1)}
    cancelled: set[tuple[str, int]] = set()
    for _ in range(300):
        now += rng.uniform(0.0, 400.0)
        current = run.current_stage
        stage = current.stage if current is not None and rng.random() < 0.8 else rng.choice(STAGES)
        attempt = max(1, (current.attempt if current else 1) + rng.choice((-2, -1, 0, 0, 0, 1)))
        clock = at(now - rng.uniform(0.0, 5.0))
        kind = rng.choice(("started", "succeeded", "failed", "deadline", "cancel", "retry"))
        message: object
        if kind == "started":
            message = started_at(stage, attempt, clock)
        elif kind == "succeeded":
            message = succeeded(stage, attempt, occurred_at=clock).model_copy(
                update={"duration_s": rng.uniform(0.0, 600.0)}
            )
        elif kind == "failed":
            message = failed(stage, attempt, retryable=rng.random() < 0.7).model_copy(
                update={"occurred_at": clock}
            )
        elif kind == "deadline":
            message = DeadlineExpired(RUN_ID, stage, attempt)
        else:
            message = CancelRun(RUN_ID) if kind == "cancel" else RetryRun(RUN_ID)
        try:
            decision = apply(run, message, seconds=now)
        except InvalidTransition:
            continue
        if run.status == "cancelled" and not isinstance(message, RetryRun):
            assert decision.run == run, f"a cancelled run moved on {message}"
        for scheduled in decision.commands:
            if isinstance(scheduled.command, RunStage):
                key = (scheduled.command.stage, scheduled.command.attempt)
                assert key not in issued, f"command {key} issued twice"
                issued.add(key)
        run = decision.run
        for state in run.stages:
            numbers = [record.attempt for record in state.history]
            assert numbers == sorted(set(numbers)), f"{state.stage} history {numbers}"
            assert all(number <= state.attempt for number in numbers)
            for record in state.history:
                times = [record.queued_at, record.started_at, record.finished_at]
                known = [t for t in times if t is not None]
                assert known == sorted(known), f"{state.stage} attempt {record.attempt}: {times}"
                if record.outcome == "cancelled":
                    cancelled.add((state.stage, record.attempt))
                if record.outcome == "succeeded":
                    assert (state.stage, record.attempt) not in cancelled
            if state.queued_at is not None and state.started_at is not None:
                assert state.queued_at <= state.started_at, state.stage
