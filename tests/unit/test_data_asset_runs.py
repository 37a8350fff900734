"""Data-asset versions in the run state machine (a pure function): a split registered as a
version names it on the run and in later commands; a run on ``asset:<name>@<version>`` skips
aggregation and split and trains on the version's prefix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from coordinator.domain import (
    AdmitRun,
    CancelRun,
    DataAssetRef,
    DataAssetStart,
    Policy,
    RetryRun,
    Run,
    ScheduledCommand,
    StartRun,
    decide,
)
from shared.messages import RunStage, Stage, StageFailed, StageStarted, StageSucceeded

RUN_ID = UUID("12345678-1234-5678-1234-567812345678")
GROUP_ID = UUID("87654321-1234-5678-1234-567812345678")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(max_attempts=2, backoff_base_s=1.0, backoff_max_s=1.0)
PREFIX = "artifacts/cache/split/abc/"
ASSET = DataAssetStart("symbols-training-data", "3", PREFIX)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def succeeded(stage: Stage, outputs: dict[str, str], details: dict[str, object]) -> StageSucceeded:
    return StageSucceeded(
        correlation_id=RUN_ID,
        stage=stage,
        attempt=1,
        outputs=outputs,
        details=details,
        occurred_at=T0,
    )


def command_of(decision_commands: list[ScheduledCommand]) -> RunStage:
    [scheduled] = decision_commands
    command = scheduled.command
    assert isinstance(command, RunStage)
    return command


def test_a_split_registered_as_a_version_names_it_on_the_run_and_in_later_commands() -> None:
    run = decide(None, StartRun(RUN_ID, "symbols", "raw/set1", {}), now=T0, policy=POLICY).run
    run = decide(
        run,
        succeeded("aggregation", {"dataset": "artifacts/cache/aggregation/x"}, {}),
        now=at(1),
        policy=POLICY,
    ).run
    assert run.data_asset is None
    decision = decide(
        run,
        succeeded(
            "split",
            {"split": PREFIX},
            {"rows": 9, "data_asset": "symbols-training-data", "data_asset_version": "2"},
        ),
        now=at(2),
        policy=POLICY,
    )
    assert decision.run.data_asset == DataAssetRef(name="symbols-training-data", version="2")
    assert any("data asset symbols-training-data version 2" in n for n in decision.notes)
    train = command_of(decision.commands)
    assert train.stage == "train"
    assert train.inputs["data_asset"] == "symbols-training-data@2"
    assert train.inputs["split"] == PREFIX
    # ... and register and tag see it too.
    decision = decide(
        decision.run,
        succeeded("train", {"model": "artifacts/cache/train/y"}, {}),
        now=at(3),
        policy=POLICY,
    )
    assert command_of(decision.commands).inputs["data_asset"] == "symbols-training-data@2"


def test_a_split_without_a_data_asset_leaves_the_run_without_one() -> None:
    run = decide(None, StartRun(RUN_ID, "echo", "raw/set1", {}), now=T0, policy=POLICY).run
    run = decide(run, succeeded("aggregation", {"dataset": "d"}, {}), now=at(1), policy=POLICY).run
    decision = decide(
        run, succeeded("split", {"split": "s"}, {"rows": 1}), now=at(2), policy=POLICY
    )
    assert decision.run.data_asset is None
    assert "data_asset" not in command_of(decision.commands).inputs


def test_a_run_on_a_data_asset_version_skips_aggregation_and_split_and_trains_on_it() -> None:
    start = StartRun(RUN_ID, "symbols", "asset:symbols-training-data@latest", {}, data_asset=ASSET)
    decision = decide(None, start, now=T0, policy=POLICY)
    run = decision.run
    assert [s.status for s in run.stages] == ["skipped", "skipped", "queued", "pending", "pending"]
    assert run.stage("split").outputs == {"split": PREFIX}
    assert run.stage("aggregation").outputs == {}
    assert run.data == "asset:symbols-training-data@latest"
    assert run.data_asset == DataAssetRef(name="symbols-training-data", version="3")
    assert run.outputs == {"split": PREFIX}
    train = command_of(decision.commands)
    assert (train.stage, train.attempt) == ("train", 1)
    assert train.inputs == {
        "data": "asset:symbols-training-data@latest",
        "split": PREFIX,
        "data_asset": "symbols-training-data@3",
    }
    assert decision.notes[0].startswith("training on data asset symbols-training-data version 3")
    # The run goes on as any other: train, register, tag.
    run = decide(
        run,
        StageStarted(correlation_id=RUN_ID, stage="train", attempt=1, worker="w", delivery_count=1),
        now=at(1),
        policy=POLICY,
    ).run
    assert run.current_stage is not None and run.current_stage.stage == "train"


def test_a_failed_train_on_a_data_asset_is_retried_at_train() -> None:
    start = StartRun(RUN_ID, "symbols", "asset:a@3", {}, data_asset=ASSET)
    run = decide(None, start, now=T0, policy=POLICY).run
    run = decide(
        run,
        StageFailed(
            correlation_id=RUN_ID,
            stage="train",
            attempt=1,
            error="bad",
            error_type="X",
            retryable=False,
        ),
        now=at(1),
        policy=POLICY,
    ).run
    assert run.status == "failed"
    decision = decide(run, RetryRun(RUN_ID), now=at(2), policy=POLICY)
    assert command_of(decision.commands).stage == "train"
    assert [s.status for s in decision.run.stages][:2] == ["skipped", "skipped"]


def test_a_group_member_on_a_data_asset_is_admitted_at_train() -> None:
    start = StartRun(RUN_ID, "symbols", "asset:a@3", {}, group_id=GROUP_ID, data_asset=ASSET)
    run: Run = decide(None, start, now=T0, policy=POLICY).run
    assert run.status == "waiting"
    decision = decide(run, AdmitRun(RUN_ID), now=at(1), policy=POLICY)
    assert command_of(decision.commands).stage == "train"


def test_cancelling_a_run_on_a_data_asset_stops_train_not_the_skipped_stages() -> None:
    start = StartRun(RUN_ID, "symbols", "asset:a@3", {}, data_asset=ASSET)
    run = decide(None, start, now=T0, policy=POLICY).run
    decision = decide(run, CancelRun(RUN_ID), now=at(1), policy=POLICY)
    assert [s.status for s in decision.run.stages][:3] == ["skipped", "skipped", "cancelled"]
