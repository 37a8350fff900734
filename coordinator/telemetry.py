"""The coordinator's telemetry: one span per decision, run and model events on transitions.

``decision_span`` wraps the handling of one input (a run request, a stage event, a missed
deadline) in a ``SPAN_COORDINATOR`` span of the run's trace; ``record_decision``, called
where every decision is applied (``Coordinator._after``), compares the run before and after
and emits the custom events of ``shared.telemetry`` for what changed, in that span's context,
so their ``operation_Id`` is the run's correlation id. Comparing states (rather than looking
at the input) keeps duplicates, stale events and ignored inputs silent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from coordinator.domain import (
    AdmitRun,
    CancelRun,
    CoordinatorInput,
    DeadlineExpired,
    Decision,
    NoLiveWorker,
    RetryRun,
    Run,
    StartRun,
    no_live_worker,
)
from shared.errors import RetrainerError
from shared.messages import StageEvent, StageFailed
from shared.promotion import ChampionChange
from shared.telemetry import (
    ATTR_ACTOR,
    ATTR_CORRELATION_ID,
    ATTR_ENTITY,
    ATTR_ERROR,
    ATTR_ERROR_TYPE,
    ATTR_GROUP_ID,
    ATTR_MODEL_NAME,
    ATTR_MODEL_VERSION,
    ATTR_OUTCOME,
    ATTR_PREVIOUS_VERSION,
    ATTR_PRIMARY_METRIC,
    ATTR_PRIMARY_METRIC_VALUE,
    ATTR_REASON,
    ATTR_RECIPE,
    ATTR_RUN_STATUS,
    ATTR_STAGE,
    ATTR_TRIGGER,
    EVENT_MODEL_PROMOTED,
    EVENT_MODEL_REGISTERED,
    EVENT_RUN_CANCELLED,
    EVENT_RUN_FAILED,
    EVENT_RUN_STARTED,
    EVENT_RUN_SUCCEEDED,
    EVENT_STAGE_WITHOUT_WORKER,
    OUTCOME_POSTPONED,
    SpanHandle,
    coordinator_span,
    current_span,
    emit_event,
)

log = logging.getLogger(__name__)

_INPUT_NAMES: dict[type, str] = {
    StartRun: "start_run",
    AdmitRun: "admit_run",
    CancelRun: "cancel_run",
    RetryRun: "retry_run",
    DeadlineExpired: "deadline_expired",
    NoLiveWorker: "no_live_worker",
}

_STATUS_EVENTS = {
    "succeeded": EVENT_RUN_SUCCEEDED,
    "failed": EVENT_RUN_FAILED,
    "cancelled": EVENT_RUN_CANCELLED,
}


def input_name(message: CoordinatorInput) -> str:
    """``start_run``, ``admit_run``, ``cancel_run``, ``retry_run``, ``deadline_expired`` or the
    stage event's message type."""
    if isinstance(message, StageEvent):
        return message.message_type
    return _INPUT_NAMES[type(message)]


@contextmanager
def decision_span(message: CoordinatorInput) -> Iterator[SpanHandle]:
    """The coordinator span of one input, in the run's trace (a stage event's traceparent is
    the worker's stage span)."""
    traceparent = stage = attempt = None
    if isinstance(message, StageEvent):
        run_id = message.correlation_id
        traceparent, stage, attempt = message.traceparent, message.stage, message.attempt
    else:
        run_id = message.run_id
        if isinstance(message, DeadlineExpired | NoLiveWorker):
            stage, attempt = message.stage, message.attempt
    with coordinator_span(
        run_id, input_name(message), traceparent=traceparent, stage=stage, attempt=attempt
    ) as span:
        yield span


def record_decision(
    decision: Decision,
    message: CoordinatorInput | None,
    previous: Run | None,
    *,
    recipes: Callable[[str], Any],
) -> None:
    """Describe the decision on the current span and emit the events of what it changed:
    ``RunStarted`` for a new run, ``RunSucceeded``/``RunFailed``/``RunCancelled`` when the
    status becomes one of those, ``ModelRegistered``/``ModelPromoted`` when register / tag
    (having promoted) succeed. ``previous`` is the run the decision started from. Never
    raises: the decision is committed already."""
    try:
        _record(decision, message, previous, recipes)
    except Exception:
        log.exception("recording telemetry of a decision on run %s failed", decision.run.id)


def _record(
    decision: Decision,
    message: CoordinatorInput | None,
    previous: Run | None,
    recipes: Callable[[str], Any],
) -> None:
    run = decision.run
    common = {
        ATTR_CORRELATION_ID: str(run.id),
        ATTR_RECIPE: run.recipe,
        ATTR_TRIGGER: run.trigger,
        ATTR_RUN_STATUS: run.status,
        ATTR_ENTITY: run.entity,
        ATTR_GROUP_ID: None if run.group_id is None else str(run.group_id),
    }
    current_span().set({key: value for key, value in common.items() if value is not None})
    if previous is None and isinstance(message, StartRun):
        emit_event(EVENT_RUN_STARTED, common)

    registered_before = previous is not None and previous.stage("register").status == "succeeded"
    if run.stage("register").status == "succeeded" and not registered_before:
        emit_event(EVENT_MODEL_REGISTERED, {**common, **_model(run, recipes)})
    tag = run.stage("tag")
    tagged_before = previous is not None and previous.stage("tag").status == "succeeded"
    if tag.status == "succeeded" and not tagged_before and run.model and run.model.champion:
        emit_event(
            EVENT_MODEL_PROMOTED,
            {**common, **_model(run, recipes), ATTR_REASON: run.model.reason},
        )

    current = run.current_stage
    if isinstance(message, DeadlineExpired) and previous is not None and not decision.commands:
        # Not given up: the attempt waits on (a backlog, or no live worker), or was not due.
        current_span().set({ATTR_OUTCOME: OUTCOME_POSTPONED})
    if current is not None and current.waiting == no_live_worker(current.stage):
        before = previous.current_stage if previous is not None else None
        if before is None or before.waiting != current.waiting:
            log.warning("run %s: %s", run.id, current.waiting)
            emit_event(EVENT_STAGE_WITHOUT_WORKER, {**common, ATTR_STAGE: current.stage})

    status_event = _STATUS_EVENTS.get(run.status)
    if status_event is not None and (previous is None or previous.status != run.status):
        details: dict[str, object] = {}
        if run.status == "failed":
            details = {
                ATTR_STAGE: _failed_stage(run),
                ATTR_ERROR_TYPE: _error_type(message),
                ATTR_ERROR: (run.error or "")[:1024] or None,
            }
        elif run.status == "cancelled" and previous is not None:
            current = previous.current_stage
            details = {ATTR_STAGE: current.stage if current else None}
        emit_event(status_event, {**common, **details})


def _model(run: Run, recipes: Callable[[str], Any]) -> dict[str, object]:
    model = run.model
    metric: str | None
    try:
        metric = recipes(run.recipe).primary_metric
    except RetrainerError:
        metric = None
    return {
        ATTR_MODEL_NAME: model.name if model else None,
        ATTR_MODEL_VERSION: model.version if model else None,
        ATTR_PRIMARY_METRIC: metric,
        ATTR_PRIMARY_METRIC_VALUE: run.metrics.get(metric) if metric else None,
    }


def _failed_stage(run: Run) -> str | None:
    failed = [stage for stage in run.stages if stage.status == "failed"]
    if failed:
        return failed[-1].stage
    reached = [stage for stage in run.stages if stage.status != "pending"]
    return reached[-1].stage if reached else None


def _error_type(message: CoordinatorInput | None) -> str:
    if isinstance(message, StageFailed):
        return message.error_type
    if isinstance(message, DeadlineExpired):
        return "DeadlineExpired"
    return "unknown"


TRIGGER_MANUAL = "manual"


def record_manual_promotion(
    change: ChampionChange,
    *,
    entity: str | None,
    primary_metric: str | None,
    value: float | None,
) -> None:
    """The audit entry of an operator's promote or rollback: a ``ModelPromoted`` event of no
    run (trigger ``manual``), naming who, why and the champion it replaced. Never raises: the
    change is made already."""
    try:
        emit_event(
            EVENT_MODEL_PROMOTED,
            {
                ATTR_TRIGGER: TRIGGER_MANUAL,
                ATTR_MODEL_NAME: change.model_name,
                ATTR_ENTITY: entity,
                ATTR_MODEL_VERSION: change.champion_version,
                ATTR_PREVIOUS_VERSION: change.previous_version,
                ATTR_ACTOR: change.actor,
                ATTR_REASON: change.reason,
                ATTR_PRIMARY_METRIC: primary_metric,
                ATTR_PRIMARY_METRIC_VALUE: value,
            },
        )
    except Exception:
        log.exception(
            "recording the promotion of %s v%s failed", change.model_name, change.candidate_version
        )
