"""Message contracts between the coordinator and the stage workers.

Commands ask one stage worker to do one attempt of one stage; events report back. Every
message carries the run's correlation_id (the run id) and a W3C traceparent. Messages never
carry data: stage inputs and outputs are blob names.

Versioning: each class declares ``message_type`` and ``schema_version``; both travel as
application properties. ``decode`` upgrades older versions through ``_UPCASTERS`` and refuses
unknown types or versions with ``MalformedMessageError`` (the worker dead-letters those).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.bus.port import OutgoingMessage
from shared.errors import MalformedMessageError
from shared.limits import MAX_ERROR_CHARS, MAX_MESSAGE_BYTES, truncate

Stage = Literal["aggregation", "split", "train", "register", "tag"]
STAGES: tuple[Stage, ...] = ("aggregation", "split", "train", "register", "tag")

JsonDict = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    message_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    correlation_id: UUID
    traceparent: str | None = None

    @property
    def message_id(self) -> str:
        raise NotImplementedError


class Command(Message):
    """Asks for work; exactly one handler acts on it."""


class Event(Message):
    """Reports something that happened; the coordinator folds it into the run state."""


class RunStage(Command):
    """v2 added ``entity`` (the registered model is the recipe's model for that entity) and
    ``force`` (skip the stage's cache); a v1 command means neither."""

    message_type: ClassVar[str] = "run_stage"
    schema_version: ClassVar[int] = 2

    stage: Stage
    attempt: int = Field(ge=1)
    recipe: str
    params: JsonDict = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    entity: str | None = None
    force: bool = False

    @property
    def message_id(self) -> str:
        # Deterministic so that a re-published command is dropped by duplicate detection.
        return f"{self.correlation_id}:{self.stage}:{self.attempt}"


class CancelStage(Command):
    """The run was cancelled while this stage attempt was queued or running.

    Work a stage handed to outside compute (an Azure ML job, a training subprocess) is stopped;
    a stage running in a worker's own process just finishes and its event is ignored.
    """

    message_type: ClassVar[str] = "cancel_stage"

    stage: Stage
    attempt: int = Field(ge=1)
    reason: str = "run cancelled"

    @property
    def message_id(self) -> str:
        return f"{self.correlation_id}:{self.stage}:{self.attempt}:cancel"


class StageEvent(Event):
    stage: Stage
    attempt: int = Field(ge=1)
    occurred_at: datetime = Field(default_factory=utcnow)


class StageStarted(StageEvent):
    message_type: ClassVar[str] = "stage_started"

    worker: str
    delivery_count: int = 1

    @property
    def message_id(self) -> str:
        return f"{self.correlation_id}:{self.stage}:{self.attempt}:started:{self.delivery_count}"


class StageProgress(StageEvent):
    """News about an attempt still under way, e.g. the Azure ML job a deferred stage runs as."""

    message_type: ClassVar[str] = "stage_progress"

    details: JsonDict = Field(default_factory=dict)

    @property
    def message_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.details, sort_keys=True).encode()).hexdigest()
        return f"{self.correlation_id}:{self.stage}:{self.attempt}:progress:{digest[:16]}"


class StageSucceeded(StageEvent):
    """v2 added ``delivery_count``: the bus delivery of the command that did the work (a
    worker that died mid-stage makes it 2 or more); a v1 event means 1."""

    message_type: ClassVar[str] = "stage_succeeded"
    schema_version: ClassVar[int] = 2

    outputs: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    details: JsonDict = Field(default_factory=dict)
    cached: bool = False
    duration_s: float = 0.0
    delivery_count: int = Field(default=1, ge=1)

    @property
    def message_id(self) -> str:
        return f"{self.correlation_id}:{self.stage}:{self.attempt}:succeeded"


class StageFailed(StageEvent):
    """v2 added ``delivery_count`` (as StageSucceeded's); a v1 event means 1."""

    message_type: ClassVar[str] = "stage_failed"
    schema_version: ClassVar[int] = 2

    error: str
    error_type: str
    retryable: bool
    delivery_count: int = Field(default=1, ge=1)

    @field_validator("error", "error_type")
    @classmethod
    def _bounded(cls, text: str) -> str:
        # An exception's text may repeat an input of any size; the run store keeps this.
        return truncate(text, MAX_ERROR_CHARS)

    @property
    def message_id(self) -> str:
        return f"{self.correlation_id}:{self.stage}:{self.attempt}:failed"


# How often a worker sends its heartbeat unless configured (RETRAINER_HEARTBEAT_S); the
# coordinator also goes by it for a stage it has never heard from.
DEFAULT_HEARTBEAT_S = 10.0


class WorkerHeartbeat(Event):
    """A stage worker is alive, sent every ``interval_s`` to ``stage-events``: the
    coordinator's queue deadline waits while a stage's workers are busy with a backlog and
    says so when a stage has no live worker at all. ``correlation_id`` is the worker process's
    own id (a heartbeat belongs to no run).

    ``idle_s``: how long the worker has had a free slot and found nothing to take (its receives
    came back empty), as of sending; None while it is working (every slot busy, or it took a
    command since its last empty receive). Durations, not times: the coordinator dates them by
    the bus's enqueued time, so a worker's clock skew does not matter. ``warming``: the worker
    is still importing its stage's libraries and setting up its store (it takes no message
    until it is done); its first heartbeat without it says it is warm."""

    message_type: ClassVar[str] = "worker_heartbeat"

    worker: str = Field(max_length=200)
    stage: Stage
    interval_s: float = Field(gt=0)
    slots: int = Field(ge=1)
    busy: int = Field(ge=0)
    idle_s: float | None = Field(default=None, ge=0)
    sequence: int = Field(default=0, ge=0)
    warming: bool = False

    @property
    def message_id(self) -> str:
        return f"{self.correlation_id}:heartbeat:{self.sequence}"


MESSAGE_CLASSES: dict[str, type[Message]] = {
    cls.message_type: cls
    for cls in (
        RunStage,
        CancelStage,
        StageStarted,
        StageProgress,
        StageSucceeded,
        StageFailed,
        WorkerHeartbeat,
    )
}

# The application properties that carry the W3C traceparent on the bus: Service Bus' own
# convention (its SDK and other Azure services read Diagnostic-Id) and the W3C name.
DIAGNOSTIC_ID_PROPERTY = "Diagnostic-Id"
TRACEPARENT_PROPERTY = "traceparent"


def traceparent_properties(traceparent: str | None) -> dict[str, str]:
    """Message application properties carrying ``traceparent`` (none when it is None)."""
    if not traceparent:
        return {}
    return {DIAGNOSTIC_ID_PROPERTY: traceparent, TRACEPARENT_PROPERTY: traceparent}


# (message_type, from_version) -> function turning that version's body into the next one.
_UPCASTERS: dict[tuple[str, int], Callable[[JsonDict], JsonDict]] = {
    # v2's new fields have defaults that mean what v1 meant.
    ("run_stage", 1): lambda body: body,
    # v2's delivery_count defaults to the single delivery a v1 event stood for.
    ("stage_succeeded", 1): lambda body: body,
    ("stage_failed", 1): lambda body: body,
}


def encode(message: Message, *, scheduled_enqueue_time: datetime | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        body=message.model_dump_json().encode(),
        message_id=message.message_id,
        correlation_id=str(message.correlation_id),
        subject=message.message_type,
        application_properties={
            "message_type": message.message_type,
            "schema_version": message.schema_version,
            # Diagnostic-Id (Service Bus' convention) and traceparent; the body's copy is the
            # one this code reads: an SDK's own tracing may overwrite these.
            **traceparent_properties(message.traceparent),
        },
        scheduled_enqueue_time=scheduled_enqueue_time,
    )


def decode(body: bytes, application_properties: Mapping[str, Any]) -> Message:
    """The message, or MalformedMessageError saying why it cannot be read (whatever is wrong
    with it: a consumer dead-letters it at once instead of failing on it again and again)."""
    try:
        return _decode(body, application_properties)
    except MalformedMessageError:
        raise
    except Exception as exc:  # e.g. RecursionError from JSON nested 100,000 levels deep
        raise MalformedMessageError(
            f"undecodable message: {type(exc).__name__}: {truncate(str(exc), 200)}"
        ) from exc


def _decode(body: bytes, application_properties: Mapping[str, Any]) -> Message:
    if len(body) > MAX_MESSAGE_BYTES:
        raise MalformedMessageError(f"body of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}")
    message_type = application_properties.get("message_type")
    version = application_properties.get("schema_version")
    cls = MESSAGE_CLASSES.get(str(message_type))
    if cls is None:
        raise MalformedMessageError(f"unknown message_type {truncate(repr(message_type), 100)}")
    try:
        version = int(version)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        raise MalformedMessageError(
            f"schema_version {truncate(repr(version), 100)} is not an integer"
        ) from exc
    if version > cls.schema_version or version < 1:
        raise MalformedMessageError(
            f"{message_type} schema_version {version} is not supported "
            f"(this service reads 1..{cls.schema_version})"
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, too deep, a huge int
        raise MalformedMessageError(f"{message_type} body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedMessageError(f"{message_type} body is not a JSON object")
    while version < cls.schema_version:
        data = _UPCASTERS[(cls.message_type, version)](data)
        version += 1
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise MalformedMessageError(
            f"{message_type} v{version} is invalid: {truncate(str(exc), 1000)}"
        ) from exc


def json_schemas() -> dict[str, JsonDict]:
    """JSON schema of every message, keyed ``{type}.v{version}`` (exported to docs/)."""
    return {
        f"{cls.message_type}.v{cls.schema_version}": cls.model_json_schema()
        for cls in MESSAGE_CLASSES.values()
    }
