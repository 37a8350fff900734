"""The run state machine: ``decide(run, input, now, policy) -> Decision``, with no I/O.

Everything that happens to a run arrives here as one input: a request from the API
(``StartRun``, ``CancelRun``, ``RetryRun``), a stage event from a worker (``StageStarted``,
``StageSucceeded``, ``StageFailed``) or a watchdog tick (``DeadlineExpired``). The answer is the
run's new state plus the stage commands to publish; the store writes both in one transaction.

Rules worth knowing:

* Only the current attempt of the current stage moves a run, so stale, duplicate and
  out-of-order events are harmless: they come back as a ``Decision`` with the run unchanged,
  no commands and a note saying why.
* One exception: a late ``StageSucceeded`` for an *older* attempt of the current stage is
  accepted. The work is done and its outputs are as good as the newer attempt's would be (stage
  outputs are content-addressed and cached), so waiting for the newer attempt only adds latency.
  The newer attempt is recorded as ``superseded`` and its events are ignored from then on.
* A ``StageSucceeded`` for the current attempt is accepted even if its ``StageStarted`` never
  arrived: the bus does not promise order between two messages.
* Deadlines are computed on the coordinator's clock (``now``), never on a worker's, so clock
  skew cannot expire a stage early; the timings shown (started/finished) are the worker's.
* A retry after a failure or a missed deadline waits ``policy.backoff``; a manual ``RetryRun``
  does not wait and gives the stage a fresh budget of ``policy.max_attempts`` attempts.
* A queue deadline (a command nobody started) measures the time a worker could have taken the
  command, from the workers' heartbeats (``DeadlineExpired.workers``): it fires only once a
  live worker of the stage has been idle, finding nothing to take, for ``queue_timeout_s``
  since the command became available. While every live worker is busy (a backlog) the
  deadline moves on; with no live worker at all the stage waits and says so
  (``StageState.waiting``): a new attempt would wait in the same queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, assert_never
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.data_assets.port import DETAIL_NAME, DETAIL_VERSION
from shared.data_assets.port import INPUT as DATA_ASSET_INPUT
from shared.errors import PermanentError
from shared.messages import (
    STAGES,
    CancelStage,
    RunStage,
    Stage,
    StageEvent,
    StageFailed,
    StageProgress,
    StageStarted,
    StageSucceeded,
)
from shared.telemetry import command_traceparent

# ``waiting``: a run-group member not yet admitted (the group's concurrency limit is reached).
RunStatus = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"]
# ``skipped``: not run at all, e.g. aggregation and split of a run that trains on an existing
# data-asset version (its outputs are that version's).
StageStatus = Literal["pending", "queued", "running", "succeeded", "failed", "cancelled", "skipped"]
AttemptOutcome = Literal["succeeded", "failed", "timed_out", "superseded", "cancelled"]

ACTIVE_RUN_STATUSES: tuple[RunStatus, ...] = ("queued", "running")
UNFINISHED_RUN_STATUSES: tuple[RunStatus, ...] = ("waiting", "queued", "running")
FINISHED_RUN_STATUSES: tuple[RunStatus, ...] = ("succeeded", "failed", "cancelled")
_IN_FLIGHT: tuple[StageStatus, ...] = ("queued", "running")

# Keys the register and tag workers put in their StageSucceeded ``details`` (services/).
REGISTER_MODEL_NAME = "model_name"
REGISTER_MODEL_VERSION = "model_version"
TAG_PROMOTED = "promoted"
TAG_REASON = "reason"

JsonDict = dict[str, Any]


class RunNotFound(PermanentError):
    def __init__(self, run_id: UUID) -> None:
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class InvalidTransition(PermanentError):
    """A request that the run's current status does not allow (HTTP 409)."""

    def __init__(self, run_id: UUID, status: RunStatus, action: str) -> None:
        super().__init__(f"cannot {action} run {run_id}: it is {status}")
        self.run_id = run_id
        self.status = status
        self.action = action


# --- state -------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AttemptRecord(_Frozen):
    """One finished attempt of a stage, kept for the run's history."""

    attempt: int
    outcome: AttemptOutcome
    error: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Bus deliveries of the attempt's command (2 or more: a worker died or stopped mid-stage
    # and the bus redelivered it); None when no worker reported it.
    deliveries: int | None = None


class StageState(_Frozen):
    stage: Stage
    status: StageStatus = "pending"
    attempt: int = 0
    # The attempt number at which the current retry budget started: 1, or the attempt a
    # manual RetryRun queued.
    budget_start: int = 1
    queued_at: datetime | None = None
    not_before: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    deadline: datetime | None = None
    worker: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    details: JsonDict = Field(default_factory=dict)
    cached: bool = False
    error: str | None = None
    history: tuple[AttemptRecord, ...] = ()
    # Bus deliveries of the current attempt's command so far (0: not started).
    deliveries: int = 0
    # Why a queued attempt still waits once its queue deadline passed: its workers are busy
    # with a backlog, or the stage has no live worker at all.
    waiting: str | None = None

    @property
    def attempts_in_budget(self) -> int:
        return self.attempt - self.budget_start + 1

    def record(self, outcome: AttemptOutcome) -> AttemptRecord:
        """The current attempt as history; set ``finished_at`` (and ``error``) first."""
        return AttemptRecord(
            attempt=self.attempt,
            outcome=outcome,
            error=self.error,
            queued_at=self.queued_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            deliveries=self.deliveries or None,
        )


class DataAssetRef(_Frozen):
    """A data-asset version (shared/data_assets): what the run trains on."""

    name: str
    version: str

    @property
    def input(self) -> str:
        return f"{self.name}@{self.version}"


class ModelInfo(_Frozen):
    name: str | None
    version: str | None
    champion: bool | None
    reason: str | None


class Run(_Frozen):
    id: UUID
    recipe: str
    data: str
    params: JsonDict
    trigger: str
    # What started the run beyond ``trigger``, e.g. the blob events of a blob trigger.
    trigger_details: JsonDict = Field(default_factory=dict)
    status: RunStatus
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    stages: tuple[StageState, ...]
    # What the model is for (shared/entities.py): the model registered is the recipe's model
    # for this entity, with a champion of its own.
    entity: str | None = None
    # The stages whose cache this run skips.
    force: tuple[Stage, ...] = ()
    # The run group this run is a member of, and since when it waits for admission there.
    group_id: UUID | None = None
    waiting_since: datetime | None = None
    # The data-asset version the run trains on: the one its split was registered as, or the
    # one it was started on (``data`` = ``asset:<name>@<version|latest>``, pinned at start).
    data_asset: DataAssetRef | None = None

    def stage(self, name: Stage) -> StageState:
        return self.stages[STAGES.index(name)]

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES

    @property
    def current_stage(self) -> StageState | None:
        """The stage with an attempt in flight; None once the run is finished."""
        return next((s for s in self.stages if s.status in _IN_FLIGHT), None)

    @property
    def deadline(self) -> datetime | None:
        current = self.current_stage
        return current.deadline if current else None

    @property
    def outputs(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for stage in self.stages:
            if stage.status in ("succeeded", "skipped"):
                merged.update(stage.outputs)
        return merged

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.stage("train").metrics)

    @property
    def model(self) -> ModelInfo | None:
        register = self.stage("register")
        if register.status != "succeeded":
            return None
        tag = self.stage("tag")
        tag_details = tag.details if tag.status == "succeeded" else {}
        version = register.details.get(REGISTER_MODEL_VERSION)
        champion = tag_details.get(TAG_PROMOTED)
        return ModelInfo(
            name=register.details.get(REGISTER_MODEL_NAME),
            version=None if version is None else str(version),
            champion=None if champion is None else bool(champion),
            reason=tag_details.get(TAG_REASON),
        )


# --- inputs and outputs ------------------------------------------------------------------


@dataclass(frozen=True)
class DataAssetStart:
    """Train on this existing data-asset version: aggregation and split are skipped and the
    split's output is ``prefix`` (the version's split folder)."""

    name: str
    version: str
    prefix: str


@dataclass(frozen=True)
class StartRun:
    """A new run; a run-group member (``group_id``) starts ``waiting`` for admission."""

    run_id: UUID
    recipe: str
    data: str
    params: Mapping[str, Any]
    trigger: str = "api"
    trigger_details: Mapping[str, Any] = field(default_factory=dict)
    entity: str | None = None
    force: tuple[Stage, ...] = ()
    group_id: UUID | None = None
    data_asset: DataAssetStart | None = None


@dataclass(frozen=True)
class AdmitRun:
    """A waiting group member may go: its group has a free slot (``admit``)."""

    run_id: UUID


@dataclass(frozen=True)
class CancelRun:
    run_id: UUID


@dataclass(frozen=True)
class RetryRun:
    run_id: UUID


@dataclass(frozen=True)
class WorkerSeen:
    """One worker of a stage as its latest heartbeat showed it, on the coordinator's side of
    the bus: ``checked_at`` (when it sent it), ``idle_since`` (since when it had a free slot
    and found nothing to take; None: working) and ``expires_at`` (when, without a newer
    heartbeat, it no longer counts as live)."""

    worker: str
    checked_at: datetime
    idle_since: datetime | None
    expires_at: datetime


@dataclass(frozen=True)
class DeadlineExpired:
    """``workers``: the heartbeats of the stage's workers at ``now``; None: not known (the
    queue deadline then fires as a plain timeout)."""

    run_id: UUID
    stage: Stage
    attempt: int
    workers: tuple[WorkerSeen, ...] | None = None


@dataclass(frozen=True)
class NoLiveWorker:
    """The watchdog's finding that a queued attempt's stage has no live worker: no heartbeat
    from any worker of the stage for the heartbeat horizon, and no worker that sends none
    (an older version) seen starting a stage. The run says so at once, before its deadline."""

    run_id: UUID
    stage: Stage
    attempt: int


CoordinatorInput = (
    StartRun
    | AdmitRun
    | CancelRun
    | RetryRun
    | DeadlineExpired
    | NoLiveWorker
    | StageStarted
    | StageProgress
    | StageSucceeded
    | StageFailed
)


@dataclass(frozen=True)
class ScheduledCommand:
    command: RunStage | CancelStage
    not_before: datetime | None = None


@dataclass(frozen=True)
class Decision:
    run: Run
    commands: list[ScheduledCommand] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 3
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    # From publishing a command until its StageStarted arrives.
    queue_timeout_s: float = 300.0
    # From StageStarted until StageSucceeded/StageFailed.
    run_timeout_s: float = 900.0
    run_timeout_overrides_s: Mapping[Stage, float] = field(
        default_factory=lambda: {"train": 7200.0}
    )

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def backoff(self, failed_attempts: int) -> timedelta:
        """Wait before the next attempt: base, 2*base, 4*base, ... capped at backoff_max_s."""
        delay = self.backoff_base_s * 2 ** (failed_attempts - 1)
        return timedelta(seconds=min(delay, self.backoff_max_s))

    def run_timeout(self, stage: Stage) -> float:
        return self.run_timeout_overrides_s.get(stage, self.run_timeout_s)


# --- the state machine -------------------------------------------------------------------


def decide(
    run: Run | None, message: CoordinatorInput, *, now: datetime, policy: Policy
) -> Decision:
    """Fold one input into a run. ``run`` is None only for a run that does not exist yet.

    Raises RunNotFound for an input other than StartRun when ``run`` is None, and
    InvalidTransition for a cancel or retry that the run's status does not allow.
    """
    if isinstance(message, StartRun):
        if run is not None:
            return _ignore(run, f"run {run.id} already exists")
        return _start(message, now, policy)
    if run is None:
        raise RunNotFound(
            message.correlation_id if isinstance(message, StageEvent) else message.run_id
        )
    match message:
        case AdmitRun():
            return _admit(run, now, policy)
        case CancelRun():
            return _cancel(run, now)
        case RetryRun():
            return _retry_run(run, now, policy)
        case DeadlineExpired():
            return _deadline_expired(run, message, now, policy)
        case NoLiveWorker():
            return _no_live_worker(run, message, now)
        case StageStarted():
            return _stage_started(run, message, now, policy)
        case StageProgress():
            return _stage_progress(run, message, now)
        case StageSucceeded():
            return _stage_succeeded(run, message, now, policy)
        case StageFailed():
            return _stage_failed(run, message, now, policy)
        case _:
            assert_never(message)


def _start(message: StartRun, now: datetime, policy: Policy) -> Decision:
    run = Run(
        id=message.run_id,
        recipe=message.recipe,
        data=message.data,
        params=dict(message.params),
        trigger=message.trigger,
        trigger_details=dict(message.trigger_details),
        status="queued",
        created_at=now,
        updated_at=now,
        stages=tuple(StageState(stage=stage) for stage in STAGES),
        entity=message.entity,
        force=message.force,
        group_id=message.group_id,
    )
    notes = []
    if message.data_asset is not None:
        run = _on_data_asset(run, message.data_asset, now)
        notes.append(
            f"training on data asset {message.data_asset.name} version"
            f" {message.data_asset.version}: aggregation and split skipped"
        )
    if message.group_id is not None:
        run = run.model_copy(update={"status": "waiting", "waiting_since": now})
        return Decision(run, notes=[*notes, f"run created in group {message.group_id}; waiting"])
    queued = _queue(run, _first_stage(run), now, policy, not_before=None, note="run started")
    return Decision(queued.run, queued.commands, [*notes, *queued.notes])


def _on_data_asset(run: Run, asset: DataAssetStart, now: datetime) -> Run:
    """``run`` with aggregation and split skipped: the split's output is the version's."""
    details = {DETAIL_NAME: asset.name, DETAIL_VERSION: asset.version}
    for name in ("aggregation", "split"):
        skipped = run.stage(name).model_copy(
            update={
                "status": "skipped",
                "finished_at": now,
                "outputs": {"split": asset.prefix} if name == "split" else {},
                "details": details,
            }
        )
        run = _put(run, skipped)
    return run.model_copy(
        update={"data_asset": DataAssetRef(name=asset.name, version=asset.version)}
    )


def _first_stage(run: Run) -> StageState:
    """The first stage a new run (or a newly admitted member) runs: skipped ones are not."""
    return next(stage for stage in run.stages if stage.status != "skipped")


def _admit(run: Run, now: datetime, policy: Policy) -> Decision:
    if run.status != "waiting":
        return _ignore(run, f"admission of a run that is {run.status}")
    # A retried member resumes at the stage that stopped; a new one starts at the first.
    stopped = next((s for s in run.stages if s.status in ("failed", "cancelled")), None)
    run = run.model_copy(update={"waiting_since": None})
    if stopped is None:
        run = run.model_copy(update={"status": "queued"})
        return _queue(run, _first_stage(run), now, policy, not_before=None, note="run admitted")
    run = run.model_copy(update={"status": "running"})
    stage = stopped.model_copy(update={"budget_start": stopped.attempt + 1})
    return _queue(run, stage, now, policy, not_before=None, note=f"run admitted at {stage.stage}")


def _cancel(run: Run, now: datetime) -> Decision:
    if run.is_finished:
        raise InvalidTransition(run.id, run.status, "cancel")
    current = run.current_stage
    commands: list[ScheduledCommand] = []
    if current is not None and current.status in _IN_FLIGHT:
        commands.append(_stop(run.id, current, "run cancelled"))
    if current is not None:
        current = current.model_copy(update={"error": "cancelled", "finished_at": now})
        cancelled = current.model_copy(
            update={
                "status": "cancelled",
                "deadline": None,
                "history": (*current.history, current.record("cancelled")),
            }
        )
        run = _put(run, cancelled)
    run = run.model_copy(
        update={
            "status": "cancelled",
            "updated_at": now,
            "finished_at": now,
            "waiting_since": None,
        }
    )
    return Decision(run, commands, notes=["run cancelled"])


def _retry_run(run: Run, now: datetime, policy: Policy) -> Decision:
    if run.status not in ("failed", "cancelled"):
        raise InvalidTransition(run.id, run.status, "retry")
    if run.group_id is not None:
        # A group member waits for a slot again, behind the members already waiting.
        run = run.model_copy(
            update={
                "status": "waiting",
                "waiting_since": now,
                "error": None,
                "finished_at": None,
                "updated_at": now,
            }
        )
        return Decision(run, notes=["run retried; waiting for a slot in its group"])
    # A run stops at the stage that failed or was cancelled: the stages after it are still
    # pending, so only this one needs a new attempt.
    stopped = next(s for s in run.stages if s.status in ("failed", "cancelled"))
    run = run.model_copy(
        update={"status": "running", "error": None, "finished_at": None, "updated_at": now}
    )
    stage = stopped.model_copy(update={"budget_start": stopped.attempt + 1})
    return _queue(run, stage, now, policy, not_before=None, note=f"run retried at {stage.stage}")


def _stage_started(run: Run, event: StageStarted, now: datetime, policy: Policy) -> Decision:
    stage = _current_attempt(run, event)
    if stage is None:
        return _ignore_event(run, event)
    # A redelivered command starts the attempt again: its clock restarts, its start time stays.
    stage = stage.model_copy(
        update={
            "status": "running",
            "started_at": stage.started_at or _not_before_queued(stage, event.occurred_at),
            "deadline": now + timedelta(seconds=policy.run_timeout(stage.stage)),
            "worker": event.worker,
            "deliveries": max(stage.deliveries, event.delivery_count),
            "waiting": None,
        }
    )
    run = _put(run, stage).model_copy(update={"status": "running", "updated_at": now})
    note = f"{stage.stage} attempt {stage.attempt} started on {event.worker}"
    if event.delivery_count > 1:
        note += f" (delivery {event.delivery_count} of its command)"
    return Decision(run, notes=[note])


def _stage_progress(run: Run, event: StageProgress, now: datetime) -> Decision:
    stage = _current_attempt(run, event)
    if stage is None or stage.status not in _IN_FLIGHT:
        return _ignore_event(run, event)
    stage = stage.model_copy(update={"details": {**stage.details, **event.details}})
    run = _put(run, stage).model_copy(update={"updated_at": now})
    shown = ", ".join(f"{key}={value}" for key, value in sorted(event.details.items()))
    return Decision(run, notes=[f"{stage.stage} attempt {stage.attempt}: {shown}"])


def _stage_succeeded(run: Run, event: StageSucceeded, now: datetime, policy: Policy) -> Decision:
    stage = _current_attempt(run, event)
    if stage is not None:
        started_at = stage.started_at or _not_before_queued(
            stage, event.occurred_at - timedelta(seconds=event.duration_s)
        )
        finished_at = max(event.occurred_at, started_at)
        deliveries = max(stage.deliveries, event.delivery_count)
        success = AttemptRecord(
            attempt=event.attempt,
            outcome="succeeded",
            queued_at=stage.queued_at,
            started_at=started_at,
            finished_at=finished_at,
            deliveries=deliveries,
        )
        history = (*stage.history, success)
        notes = []
    else:
        late = _late_success(run, event)
        if late is None:
            return _ignore_event(run, event)
        stage, timed_out = late
        # The attempt that timed out did the work after all: its record becomes the success
        # (one record per attempt number), and the attempt queued in its place is superseded.
        # ``attempt`` keeps the newest number so that no command id is ever issued twice.
        superseded = stage.model_copy(update={"finished_at": now}).record("superseded")
        queued_at = timed_out.queued_at
        derived = event.occurred_at - timedelta(seconds=event.duration_s)
        started_at = timed_out.started_at or (max(derived, queued_at) if queued_at else derived)
        finished_at = max(event.occurred_at, started_at)
        deliveries = event.delivery_count
        success = AttemptRecord(
            attempt=event.attempt,
            outcome="succeeded",
            queued_at=queued_at,
            started_at=started_at,
            finished_at=finished_at,
            deliveries=deliveries,
        )
        kept = [r for r in stage.history if r.attempt != event.attempt]
        history = tuple(sorted([*kept, success, superseded], key=lambda r: r.attempt))
        stage = stage.model_copy(update={"queued_at": queued_at})
        notes = [f"{stage.stage} attempt {stage.attempt} superseded by a late success"]
    stage = stage.model_copy(
        update={
            "status": "succeeded",
            "started_at": started_at,
            "finished_at": finished_at,
            "deadline": None,
            "outputs": dict(event.outputs),
            "metrics": dict(event.metrics),
            "details": dict(event.details),
            "cached": event.cached,
            "error": None,
            "history": history,
            "deliveries": deliveries,
            "waiting": None,
        }
    )
    run = _put(run, stage).model_copy(update={"status": "running", "updated_at": now})
    notes.append(f"{stage.stage} attempt {event.attempt} succeeded")
    asset = _registered_asset(stage)
    if asset is not None:
        run = run.model_copy(update={"data_asset": asset})
        notes.append(f"split registered as data asset {asset.name} version {asset.version}")
    index = STAGES.index(stage.stage)
    if index + 1 == len(STAGES):
        run = run.model_copy(update={"status": "succeeded", "finished_at": now})
        return Decision(run, notes=[*notes, "run succeeded"])
    queued = _queue(run, run.stages[index + 1], now, policy, not_before=None, note=None)
    return Decision(queued.run, queued.commands, [*notes, *queued.notes])


def _registered_asset(stage: StageState) -> DataAssetRef | None:
    """The data-asset version a successful split was registered as (its details say)."""
    if stage.stage != "split":
        return None
    name, version = stage.details.get(DETAIL_NAME), stage.details.get(DETAIL_VERSION)
    if not isinstance(name, str) or not isinstance(version, str | int):
        return None
    return DataAssetRef(name=name, version=str(version))


def _stage_failed(run: Run, event: StageFailed, now: datetime, policy: Policy) -> Decision:
    stage = _current_attempt(run, event)
    if stage is None:
        return _ignore_event(run, event)
    started_at = stage.started_at or _not_before_queued(stage, event.occurred_at)
    stage = stage.model_copy(
        update={
            "started_at": started_at,
            "finished_at": max(event.occurred_at, started_at),
            "error": f"{event.error_type}: {event.error}",
            "deliveries": max(stage.deliveries, event.delivery_count),
            "waiting": None,
        }
    )
    if not event.retryable:
        return _fail(run, stage, "failed", f"{stage.stage} failed: {event.error}", now)
    if stage.attempts_in_budget >= policy.max_attempts:
        reason = f"{stage.stage} failed after {stage.attempts_in_budget} attempts: {event.error}"
        return _fail(run, stage, "failed", reason, now)
    return _retry_attempt(run, stage, "failed", now, policy)


def _deadline_expired(
    run: Run, message: DeadlineExpired, now: datetime, policy: Policy
) -> Decision:
    stage = run.current_stage
    if (
        stage is None
        or stage.stage != message.stage
        or stage.attempt != message.attempt
        or stage.deadline is None
        or stage.deadline > now
    ):
        return _ignore(run, f"deadline of {message.stage} attempt {message.attempt} is not due")
    if stage.status == "queued" and message.workers is not None:
        postponed = _postpone_queue_deadline(run, stage, message.workers, now, policy)
        if postponed is not None:
            return postponed
    if stage.status == "queued":
        problem = f"did not start within {policy.queue_timeout_s:g} s"
    else:
        problem = f"did not report within {policy.run_timeout(stage.stage):g} s"
    # The attempt is given up: work it handed to outside compute must not run on beside the
    # next attempt (an Azure ML job costs GPU time until it is cancelled).
    stop = _stop(run.id, stage, f"{stage.stage} {problem}")
    stage = stage.model_copy(update={"error": f"{stage.stage} {problem}", "finished_at": now})
    if stage.attempts_in_budget >= policy.max_attempts:
        reason = f"{stage.stage} {problem} after {stage.attempts_in_budget} attempts"
        decision = _fail(run, stage, "timed_out", reason, now)
    else:
        decision = _retry_attempt(run, stage, "timed_out", now, policy)
    return Decision(decision.run, [stop, *decision.commands], decision.notes)


def _postpone_queue_deadline(
    run: Run, stage: StageState, workers: Sequence[WorkerSeen], now: datetime, policy: Policy
) -> Decision | None:
    """A later deadline for a queued attempt that no worker could have taken for
    ``queue_timeout_s`` yet; None when one could have (the deadline fires)."""
    timeout = timedelta(seconds=policy.queue_timeout_s)
    available = stage.not_before or stage.queued_at or now
    live = [worker for worker in workers if worker.expires_at > now]
    # How long each idle live worker has found nothing to take while the command was there.
    idle = [
        worker.checked_at - max(available, worker.idle_since)
        for worker in live
        if worker.idle_since is not None
    ]
    longest = max(idle, default=None)
    if longest is not None and longest >= timeout:
        return None
    if not live:
        waiting = no_live_worker(stage.stage)
        next_check = now + timeout
    elif longest is None:
        waiting = (
            f"waiting behind a backlog: {len(live)} live {stage.stage} "
            f"worker{'s' if len(live) > 1 else ''}, all busy"
        )
        next_check = now + timeout
    else:
        waiting = None
        # Idle for a while already: check again when that reaches the timeout.
        next_check = now + max(timeout - max(longest, timedelta(0)), timedelta(seconds=1))
    waited = stage.model_copy(update={"deadline": next_check, "waiting": waiting})
    run = _put(run, waited).model_copy(update={"updated_at": now})
    note = f"{stage.stage} attempt {stage.attempt} not started yet"
    return Decision(run, notes=[f"{note}: {waiting}" if waiting else note])


def _no_live_worker(run: Run, message: NoLiveWorker, now: datetime) -> Decision:
    stage = run.current_stage
    waiting = no_live_worker(message.stage)
    if (
        stage is None
        or stage.stage != message.stage
        or stage.attempt != message.attempt
        or stage.status != "queued"
    ):
        return _ignore(run, f"{message.stage} attempt {message.attempt} is not queued")
    if stage.waiting == waiting:
        return _ignore(run, f"{waiting}: said already")
    # The deadline stays: when it comes, it goes by the heartbeats there are then.
    run = _put(run, stage.model_copy(update={"waiting": waiting})).model_copy(
        update={"updated_at": now}
    )
    return Decision(run, notes=[f"{stage.stage} attempt {stage.attempt} not started: {waiting}"])


def no_live_worker(stage: Stage) -> str:
    """``StageState.waiting`` of a queued attempt whose stage has no live worker."""
    return f"no live worker for stage {stage}"


def _stop(run_id: UUID, stage: StageState, reason: str) -> ScheduledCommand:
    """CancelStage for an attempt in flight: outside compute (an Azure ML job) is stopped."""
    return ScheduledCommand(
        CancelStage(
            correlation_id=run_id,
            traceparent=_traceparent(run_id, stage.stage, stage.attempt),
            stage=stage.stage,
            attempt=stage.attempt,
            reason=reason,
        )
    )


# --- helpers -----------------------------------------------------------------------------


def _current_attempt(run: Run, event: StageEvent) -> StageState | None:
    stage = run.current_stage
    if stage is None or stage.stage != event.stage or stage.attempt != event.attempt:
        return None
    return stage


def _late_success(run: Run, event: StageSucceeded) -> tuple[StageState, AttemptRecord] | None:
    """The current stage and the record of the older attempt that ``event`` reports, when that
    attempt was given up by its deadline: its result is as good as the next attempt's. An
    attempt that was cancelled (or that failed) stays so: its late result is never adopted, and
    neither is one from before a manual retry (``budget_start``), which starts afresh."""
    stage = run.current_stage
    if (
        stage is None
        or stage.stage != event.stage
        or not stage.budget_start <= event.attempt < stage.attempt
    ):
        return None
    records = [r for r in stage.history if r.attempt == event.attempt]
    if len(records) != 1 or records[0].outcome != "timed_out":
        return None
    return stage, records[0]


def _not_before_queued(stage: StageState, moment: datetime) -> datetime:
    """``moment`` (a worker's clock) no earlier than the attempt was queued (the coordinator's):
    an attempt never starts before it was queued, whatever the clocks' skew."""
    return moment if stage.queued_at is None else max(moment, stage.queued_at)


def _retry_attempt(
    run: Run, stage: StageState, outcome: AttemptOutcome, now: datetime, policy: Policy
) -> Decision:
    stage = stage.model_copy(update={"history": (*stage.history, stage.record(outcome))})
    not_before = now + policy.backoff(stage.attempts_in_budget)
    note = f"{stage.stage} attempt {stage.attempt} {outcome}: {stage.error}; retrying"
    return _queue(run, stage, now, policy, not_before=not_before, note=note)


def _fail(
    run: Run, stage: StageState, outcome: AttemptOutcome, reason: str, now: datetime
) -> Decision:
    stage = stage.model_copy(
        update={
            "status": "failed",
            "deadline": None,
            "error": reason,
            "history": (*stage.history, stage.record(outcome)),
        }
    )
    run = _put(run, stage).model_copy(
        update={"status": "failed", "error": reason, "updated_at": now, "finished_at": now}
    )
    return Decision(run, notes=[f"run failed: {reason}"])


def _queue(
    run: Run,
    stage: StageState,
    now: datetime,
    policy: Policy,
    *,
    not_before: datetime | None,
    note: str | None,
) -> Decision:
    """Queue the next attempt of ``stage`` and emit its command."""
    attempt = stage.attempt + 1
    queued = stage.model_copy(
        update={
            "status": "queued",
            "attempt": attempt,
            "queued_at": now,
            "not_before": not_before,
            "started_at": None,
            "finished_at": None,
            "deadline": (not_before or now) + timedelta(seconds=policy.queue_timeout_s),
            "worker": None,
            "outputs": {},
            "metrics": {},
            "details": {},
            "cached": False,
            "error": None,
            "deliveries": 0,
            "waiting": None,
        }
    )
    run = _put(run, queued).model_copy(update={"updated_at": now})
    inputs = {"data": run.data, **run.outputs}
    if run.data_asset is not None:
        inputs[DATA_ASSET_INPUT] = run.data_asset.input
    command = RunStage(
        correlation_id=run.id,
        traceparent=_traceparent(run.id, queued.stage, attempt),
        stage=queued.stage,
        attempt=attempt,
        recipe=run.recipe,
        params=dict(run.params),
        inputs=inputs,
        entity=run.entity,
        force=queued.stage in run.force,
    )
    notes = [note] if note else []
    notes.append(f"{queued.stage} attempt {attempt} queued")
    return Decision(run, [ScheduledCommand(command, not_before)], notes)


def _put(run: Run, stage: StageState) -> Run:
    stages = list(run.stages)
    stages[STAGES.index(stage.stage)] = stage
    return run.model_copy(update={"stages": tuple(stages)})


def _ignore(run: Run, why: str) -> Decision:
    return Decision(run, notes=[f"ignored: {why}"])


def _ignore_event(run: Run, event: StageEvent) -> Decision:
    current = run.current_stage
    where = (
        f"run is {run.status}"
        if run.is_finished or current is None
        else f"current is {current.stage} attempt {current.attempt} ({current.status})"
    )
    return _ignore(run, f"{event.message_type} for {event.stage} attempt {event.attempt}; {where}")


def _traceparent(run_id: UUID, stage: Stage, attempt: int) -> str:
    """W3C traceparent whose trace id is the run id, so telemetry groups by correlation id.

    The span id is derived, not random, so that deciding twice yields the same command."""
    return command_traceparent(run_id, stage, attempt)


# --- run groups --------------------------------------------------------------------------

GroupStatus = Literal["running", "succeeded", "failed", "cancelled"]
FINISHED_GROUP_STATUSES: tuple[GroupStatus, ...] = ("succeeded", "failed", "cancelled")


class RunGroup(_Frozen):
    """A parent of ordinary runs (its members), admitted ``concurrency`` at a time."""

    id: UUID
    recipe: str
    # Shared by every member; a member's own params override these.
    params: JsonDict
    concurrency: int = Field(ge=1)
    trigger: str
    # How the members were listed: given, one per sub-prefix, or one per row of a CSV blob.
    source: JsonDict = Field(default_factory=dict)
    trigger_details: JsonDict = Field(default_factory=dict)
    status: GroupStatus = "running"
    cancelled: bool = False
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


@dataclass(frozen=True)
class MemberSlot:
    """What admission needs to know of one member."""

    run_id: UUID
    position: int
    status: RunStatus
    waiting_since: datetime | None


def admit(group: RunGroup, members: Sequence[MemberSlot]) -> list[UUID]:
    """The waiting members to start now: as many as the group has free slots (members in a
    stage count against ``concurrency``), longest-waiting first, then in member order; so a
    retried member queues behind those already waiting. Nothing for a cancelled group."""
    if group.cancelled:
        return []
    active = sum(1 for member in members if member.status in ACTIVE_RUN_STATUSES)
    free = max(0, group.concurrency - active)
    waiting = sorted(
        (m for m in members if m.status == "waiting"),
        key=lambda m: (m.waiting_since or group.created_at, m.position),
    )
    return [member.run_id for member in waiting[:free]]


def group_status(group: RunGroup, statuses: Mapping[RunStatus, int]) -> GroupStatus:
    """``running`` while a member is unfinished; then ``cancelled`` if the group was,
    ``succeeded`` if every member did, else ``failed``."""
    if any(statuses.get(status, 0) for status in UNFINISHED_RUN_STATUSES):
        return "running"
    if group.cancelled:
        return "cancelled"
    if sum(statuses.values()) == statuses.get("succeeded", 0):
        return "succeeded"
    return "failed"


def settle_group(group: RunGroup, statuses: Mapping[RunStatus, int], now: datetime) -> RunGroup:
    """``group`` with the status its members' statuses give (and when it finished)."""
    status = group_status(group, statuses)
    if status == group.status:
        return group
    finished = None if status == "running" else now
    return group.model_copy(update={"status": status, "updated_at": now, "finished_at": finished})
