"""Run groups in the pure state machine: members wait, are admitted under the group's
concurrency limit in a fair order, and a retried member queues again behind the others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from coordinator.domain import (
    AdmitRun,
    CancelRun,
    MemberSlot,
    Policy,
    RetryRun,
    Run,
    RunGroup,
    RunStatus,
    StartRun,
    admit,
    decide,
    group_status,
)
from shared.messages import RunStage, StageFailed

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
GROUP = UUID("00000000-0000-0000-0000-0000000000a1")
POLICY = Policy()


def group(concurrency: int = 2, *, cancelled: bool = False) -> RunGroup:
    return RunGroup(
        id=GROUP,
        recipe="state_identifier",
        params={},
        concurrency=concurrency,
        trigger="api",
        cancelled=cancelled,
        created_at=T0,
        updated_at=T0,
    )


def slots(*statuses: RunStatus) -> list[MemberSlot]:
    return [
        MemberSlot(UUID(int=i), i, status, T0 if status == "waiting" else None)
        for i, status in enumerate(statuses)
    ]


def member(entity: str = "sp-a") -> Run:
    message = StartRun(
        uuid4(), "state_identifier", "d/sp-a", {}, entity=entity, group_id=GROUP, force=("train",)
    )
    return decide(None, message, now=T0, policy=POLICY).run


def test_a_member_starts_waiting_with_no_command() -> None:
    decision = decide(
        None,
        StartRun(uuid4(), "state_identifier", "d/a", {}, entity="a", group_id=GROUP),
        now=T0,
        policy=POLICY,
    )
    assert decision.run.status == "waiting"
    assert decision.run.waiting_since == T0
    assert decision.commands == []


def test_admission_queues_the_first_stage_carrying_entity_and_force() -> None:
    run = member()
    decision = decide(run, AdmitRun(run.id), now=T0, policy=POLICY)
    assert decision.run.status == "queued"
    assert decision.run.waiting_since is None
    (scheduled,) = decision.commands
    assert isinstance(scheduled.command, RunStage)
    assert (scheduled.command.stage, scheduled.command.entity) == ("aggregation", "sp-a")
    assert scheduled.command.force is False, "only train is forced"


def test_admitting_a_run_that_is_not_waiting_changes_nothing() -> None:
    run = decide(member(), AdmitRun(member().id), now=T0, policy=POLICY).run
    admitted = decide(run, AdmitRun(run.id), now=T0, policy=POLICY).run
    decision = decide(admitted, AdmitRun(run.id), now=T0, policy=POLICY)
    assert decision.run == admitted and decision.commands == []


def test_a_failed_member_retried_waits_then_resumes_at_the_failed_stage() -> None:
    run = member()
    run = decide(run, AdmitRun(run.id), now=T0, policy=POLICY).run
    failure = StageFailed(
        correlation_id=run.id,
        stage="aggregation",
        attempt=1,
        error="bad row",
        error_type="DataValidationError",
        retryable=False,
    )
    run = decide(run, failure, now=T0, policy=POLICY).run
    assert run.status == "failed"

    later = T0 + timedelta(seconds=5)
    retried = decide(run, RetryRun(run.id), now=later, policy=POLICY)
    assert (retried.run.status, retried.run.waiting_since) == ("waiting", later)
    assert retried.commands == [], "a retried member waits for a slot"

    resumed = decide(retried.run, AdmitRun(run.id), now=later, policy=POLICY)
    assert resumed.run.status == "running"
    (scheduled,) = resumed.commands
    assert isinstance(scheduled.command, RunStage)
    assert (scheduled.command.stage, scheduled.command.attempt) == ("aggregation", 2)


def test_a_waiting_member_is_cancelled_without_commands() -> None:
    run = member()
    decision = decide(run, CancelRun(run.id), now=T0, policy=POLICY)
    assert decision.run.status == "cancelled"
    assert decision.commands == []


def test_admission_fills_only_the_free_slots_in_member_order() -> None:
    assert admit(group(2), slots("waiting", "waiting", "waiting")) == [UUID(int=0), UUID(int=1)]
    assert admit(group(2), slots("running", "waiting", "waiting")) == [UUID(int=1)]
    assert admit(group(2), slots("queued", "running", "waiting")) == []
    assert admit(group(2), slots("succeeded", "failed", "waiting", "waiting")) == [
        UUID(int=2),
        UUID(int=3),
    ]


def test_a_member_that_waited_longest_goes_first() -> None:
    members = [
        MemberSlot(UUID(int=0), 0, "waiting", T0 + timedelta(seconds=9)),  # retried later
        MemberSlot(UUID(int=1), 1, "waiting", T0),
        MemberSlot(UUID(int=2), 2, "waiting", T0),
    ]
    assert admit(group(2), members) == [UUID(int=1), UUID(int=2)]


def test_a_cancelled_group_admits_nothing() -> None:
    assert admit(group(2, cancelled=True), slots("waiting")) == []


def test_the_group_status_follows_its_members() -> None:
    assert group_status(group(), {"waiting": 1, "succeeded": 2}) == "running"
    assert group_status(group(), {"succeeded": 3}) == "succeeded"
    assert group_status(group(), {"succeeded": 2, "failed": 1}) == "failed"
    assert group_status(group(cancelled=True), {"succeeded": 1, "cancelled": 2}) == "cancelled"
