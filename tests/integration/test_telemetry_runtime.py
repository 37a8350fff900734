"""Telemetry of the worker runtime and the coordinator, in-process, into in-memory exporters
(``shared.telemetry.use_providers``): spans in the run's trace, outcomes, metrics, and the run
and model events on the decisions that change a run."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from coordinator.domain import Policy
from coordinator.service import Coordinator
from coordinator.store import RunStore
from services.aggregation import build_spec as aggregation_spec
from services.train.jobs import TrainingJobs
from shared import telemetry
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.compute.port import JobStatus
from shared.messages import (
    Message,
    RunStage,
    StageEvent,
    StageFailed,
    StageStarted,
    StageSucceeded,
    decode,
    encode,
)
from shared.recipe_registry import get_recipe
from shared.telemetry import (
    ATTR_ATTEMPT,
    ATTR_CORRELATION_ID,
    ATTR_ENTITY,
    ATTR_ERROR_TYPE,
    ATTR_GROUP_ID,
    ATTR_INPUT,
    ATTR_MODEL_NAME,
    ATTR_MODEL_VERSION,
    ATTR_OUTCOME,
    ATTR_PRIMARY_METRIC,
    ATTR_PRIMARY_METRIC_VALUE,
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
    METRIC_QUEUE_WAIT,
    METRIC_STAGE_DURATION,
    SPAN_COORDINATOR,
    SPAN_STAGE,
    TraceParent,
    command_traceparent,
    parse_traceparent,
)
from shared.topology import (
    COORDINATOR_SUBSCRIPTION,
    EVENTS_TOPIC,
    build_topology,
    command_topic,
)
from shared.worker import Worker
from tests.recipe_fixtures import echo_recipe, only


@dataclass
class Otel:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for found in scope.metrics
            if found.name == metric
            for point in found.data.data_points
        ]


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    with telemetry.use_providers(tracer_provider=tracer_provider, meter_provider=meter_provider):
        yield Otel(spans, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@dataclass(frozen=True)
class EmittedEvent:
    name: str
    properties: dict[str, Any]
    trace_id: int


class _EventCapture(logging.Handler):
    """Custom events as the exporter would see them: the record and the current trace."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[EmittedEvent] = []

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "microsoft.custom_event.name", None)
        if name is not None:
            properties = {k: v for k, v in vars(record).items() if k.startswith("retrainer.")}
            trace_id = trace.get_current_span().get_span_context().trace_id
            self.events.append(EmittedEvent(name, properties, trace_id))

    def named(self, name: str) -> list[EmittedEvent]:
        return [event for event in self.events if event.name == name]


@pytest.fixture
def events() -> Iterator[_EventCapture]:
    capture = _EventCapture()
    logger = logging.getLogger(telemetry.EVENTS_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)  # as configure_telemetry does
    logger.addHandler(capture)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)


# --- worker --------------------------------------------------------------------------------


lookup = only(echo_recipe)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteMessageBus]:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology(lock_duration_s=5))
    yield bus
    bus.close()


@pytest.fixture
def worker(bus: SqliteMessageBus, tmp_path: Path) -> Worker:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.upload_blob("datasets/echo/raw/a.txt", b"1\n2\n")
    return Worker(
        aggregation_spec(),
        bus=bus,
        blob_store=blobs,
        recipe_lookup=lookup,
        lock_duration_s=5,
        receive_wait_s=0.2,
        name="worker-1",
    )


def send(bus: SqliteMessageBus, *, recipe: str = "echo", traceparent: bool = True) -> RunStage:
    run = uuid.uuid4()
    command = RunStage(
        correlation_id=run,
        stage="aggregation",
        attempt=1,
        recipe=recipe,
        inputs={"data": "datasets/echo/raw"},
        traceparent=command_traceparent(run, "aggregation", 1) if traceparent else None,
    )
    bus.send_messages(command_topic("aggregation"), [encode(command)])
    return command


def published(bus: SqliteMessageBus) -> list[Message]:
    received = bus.receive_messages(
        EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=50, max_wait_time=0.2
    )
    for message in received:
        bus.complete_message(message)
    return [decode(m.body, m.application_properties) for m in received]


def test_stage_span_is_the_commands_child_in_the_run_trace_and_its_events_carry_it(
    otel: Otel, bus: SqliteMessageBus, worker: Worker
) -> None:
    command = send(bus)

    assert worker.process_next()

    [span] = otel.finished(SPAN_STAGE)
    parent = parse_traceparent(command.traceparent)
    assert parent is not None and span.parent is not None
    assert span.kind is SpanKind.CONSUMER
    assert span.context.trace_id == command.correlation_id.int
    assert span.parent.span_id == parent.span_id
    assert span.status.status_code is not StatusCode.ERROR
    assert dict(span.attributes or {}) == {
        ATTR_CORRELATION_ID: str(command.correlation_id),
        ATTR_STAGE: "aggregation",
        ATTR_RECIPE: "echo",
        ATTR_ATTEMPT: 1,
        telemetry.ATTR_WORKER: "worker-1",
        ATTR_OUTCOME: "succeeded",
    }
    stage_traceparent = str(TraceParent(span.context.trace_id, span.context.span_id))
    events = published(bus)
    assert [type(e) for e in events] == [StageStarted, StageSucceeded]
    assert all(e.traceparent == stage_traceparent for e in events)

    [duration] = otel.points(METRIC_STAGE_DURATION)
    assert dict(duration.attributes) == {
        ATTR_STAGE: "aggregation",
        ATTR_RECIPE: "echo",
        ATTR_OUTCOME: "succeeded",
    }
    assert duration.count == 1 and duration.sum > 0
    [wait] = otel.points(METRIC_QUEUE_WAIT)
    assert dict(wait.attributes) == {ATTR_STAGE: "aggregation", ATTR_RECIPE: "echo"}
    assert wait.count == 1 and wait.sum >= 0


def test_a_cache_hit_is_outcome_cached_and_a_command_without_traceparent_stays_in_its_run(
    otel: Otel, bus: SqliteMessageBus, worker: Worker
) -> None:
    send(bus)
    assert worker.process_next()
    again = send(bus, traceparent=False)
    assert worker.process_next()

    first, second = otel.finished(SPAN_STAGE)
    assert first.attributes is not None and first.attributes[ATTR_OUTCOME] == "succeeded"
    assert second.attributes is not None and second.attributes[ATTR_OUTCOME] == "cached"
    assert second.context.trace_id == again.correlation_id.int
    # The parent the coordinator would have sent.
    expected = parse_traceparent(command_traceparent(again.correlation_id, "aggregation", 1))
    assert second.parent is not None and expected is not None
    assert second.parent.span_id == expected.span_id
    outcomes = {p.attributes[ATTR_OUTCOME]: p.count for p in otel.points(METRIC_STAGE_DURATION)}
    assert outcomes == {"succeeded": 1, "cached": 1}


def test_a_failed_stage_is_an_error_span_with_its_error_type(
    otel: Otel, bus: SqliteMessageBus, worker: Worker
) -> None:
    send(bus, recipe="nope")

    assert worker.process_next()

    [span] = otel.finished(SPAN_STAGE)
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes[ATTR_OUTCOME] == "failed"
    assert span.attributes[ATTR_ERROR_TYPE] == "UnknownRecipeError"
    assert "nope" in str(span.attributes[telemetry.ATTR_ERROR])
    [failed] = [e for e in published(bus) if isinstance(e, StageFailed)]
    assert failed.error_type == "UnknownRecipeError"
    [duration] = otel.points(METRIC_STAGE_DURATION)
    assert duration.attributes[ATTR_OUTCOME] == "failed"


def test_a_remote_training_job_gets_a_stage_span_over_its_whole_life(
    otel: Otel, bus: SqliteMessageBus, tmp_path: Path
) -> None:
    """The worker's span covers only the submit (outcome deferred); finishing the job records a
    second stage span of the same attempt from the submit time, in the run's trace."""
    blobs = LocalBlobStore(tmp_path / "blobs")
    jobs = TrainingJobs(bus=bus, blob_store=blobs, remote=None, poll_interval_s=60)
    run = uuid.uuid4()
    command = RunStage(
        correlation_id=run,
        stage="train",
        attempt=2,
        recipe="echo",
        inputs={"split": "artifacts/cache/split/abc"},
        traceparent=command_traceparent(run, "train", 2),
    )
    prefix = "artifacts/cache/train/def"
    blobs.upload_blob(
        f"{prefix}/result.json",
        b'{"metrics": {"score": 1.0}, "mlflow_run_id": "r", "model_uri": "models:/m"}',
    )
    submitted = datetime.now(UTC) - timedelta(minutes=30)
    record = {
        "backend": "azureml",
        "job_id": "job-1",
        "command": command.model_dump(mode="json"),
        "output_prefix": prefix,
        "submitted_at": submitted.isoformat(),
    }

    jobs.finish(record, JobStatus("succeeded"))

    [span] = otel.finished(SPAN_STAGE)
    assert span.context is not None and span.context.trace_id == run.int
    assert span.start_time is not None and span.end_time is not None
    assert (span.end_time - span.start_time) / 1e9 == pytest.approx(1800, abs=5)
    assert span.attributes is not None
    assert span.attributes[ATTR_OUTCOME] == "succeeded"
    assert span.attributes[ATTR_ATTEMPT] == 2
    assert span.attributes[telemetry.ATTR_WORKER] == "azureml:job-1"
    [duration] = otel.points(METRIC_STAGE_DURATION)
    assert duration.sum == pytest.approx(1800, abs=5)
    [succeeded] = published(bus)
    assert parse_traceparent(succeeded.traceparent) == TraceParent(run.int, span.context.span_id, 1)


# --- coordinator ---------------------------------------------------------------------------


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.upload_blob("raw/set1/part-1.csv", b"timestamp,a\n1,2\n")
    store = RunStore.from_url(f"sqlite:///{tmp_path / 'coordinator.sqlite'}")
    store.create_tables()
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology(lock_duration_s=5)),
        blobs=blobs,
        store=store,
        recipes=get_recipe,
        policy=Policy(max_attempts=1),
    )
    yield coordinator
    coordinator.close()


def deliver(coordinator: Coordinator, event: StageEvent) -> None:
    coordinator.bus.send_messages(EVENTS_TOPIC, [encode(event)])
    assert coordinator.consume_events(max_wait_s=1) == 1


def worker_traceparent(run: UUID, stage: str) -> str:
    return str(TraceParent(run.int, telemetry.derived_span_id(run, "worker", stage)))


def test_a_successful_run_emits_started_registered_promoted_succeeded_in_its_trace(
    otel: Otel, events: _EventCapture, coordinator: Coordinator
) -> None:
    run = coordinator.start_run("state_identifier", "raw/set1", {"n_clusters": 3}).id
    details: dict[str, dict[str, Any]] = {
        "register": {"model_name": "state_identifier", "model_version": "7"},
        "tag": {"model_name": "state_identifier", "model_version": "7", "promoted": True},
    }
    for stage in ("aggregation", "split", "train", "register", "tag"):
        deliver(
            coordinator,
            StageSucceeded(
                correlation_id=run,
                traceparent=worker_traceparent(run, stage),
                stage=stage,
                attempt=1,
                outputs={stage: f"out/{stage}"},
                metrics={"silhouette": 0.61} if stage == "train" else {},
                details=details.get(stage, {}),
            ),
        )
    # After the end: ignored by the state machine, so no second RunSucceeded.
    deliver(
        coordinator,
        StageStarted(correlation_id=run, stage="tag", attempt=1, worker="w", delivery_count=2),
    )

    assert [e.name for e in events.events] == [
        EVENT_RUN_STARTED,
        EVENT_MODEL_REGISTERED,
        EVENT_MODEL_PROMOTED,
        EVENT_RUN_SUCCEEDED,
    ]
    assert all(e.trace_id == run.int for e in events.events)
    [started] = events.named(EVENT_RUN_STARTED)
    assert started.properties == {
        ATTR_CORRELATION_ID: str(run),
        ATTR_RECIPE: "state_identifier",
        ATTR_TRIGGER: "api",
        ATTR_RUN_STATUS: "queued",
    }
    model = {
        ATTR_MODEL_NAME: "state_identifier",
        ATTR_MODEL_VERSION: "7",
        ATTR_PRIMARY_METRIC: "silhouette",
        ATTR_PRIMARY_METRIC_VALUE: 0.61,
    }
    for name in (EVENT_MODEL_REGISTERED, EVENT_MODEL_PROMOTED):
        [event] = events.named(name)
        assert model.items() <= event.properties.items()
    [succeeded] = events.named(EVENT_RUN_SUCCEEDED)
    assert succeeded.properties[ATTR_RUN_STATUS] == "succeeded"

    spans = otel.finished(SPAN_COORDINATOR)
    assert [s.attributes[ATTR_INPUT] for s in spans if s.attributes] == [
        "start_run",
        *["stage_succeeded"] * 5,
        "stage_started",
    ]
    assert all(s.context.trace_id == run.int and s.kind is SpanKind.CONSUMER for s in spans)
    tag_span = spans[5]
    assert tag_span.parent is not None
    assert tag_span.parent.span_id == telemetry.derived_span_id(run, "worker", "tag")
    assert tag_span.attributes is not None and tag_span.attributes[ATTR_STAGE] == "tag"
    assert tag_span.attributes[ATTR_RUN_STATUS] == "succeeded"


def test_a_run_not_promoted_emits_no_model_promoted(
    events: _EventCapture, otel: Otel, coordinator: Coordinator
) -> None:
    run = coordinator.start_run("state_identifier", "raw/set1", {"n_clusters": 3}).id
    for stage in ("aggregation", "split", "train", "register", "tag"):
        deliver(
            coordinator,
            StageSucceeded(
                correlation_id=run,
                stage=stage,
                attempt=1,
                details={"model_name": "m", "model_version": "1", "promoted": False}
                if stage in ("register", "tag")
                else {},
            ),
        )

    assert [e.name for e in events.events] == [
        EVENT_RUN_STARTED,
        EVENT_MODEL_REGISTERED,
        EVENT_RUN_SUCCEEDED,
    ]


def test_the_entity_is_a_property_of_the_run_and_model_events(
    events: _EventCapture, otel: Otel, coordinator: Coordinator
) -> None:
    run = coordinator.start_run("state_identifier", "raw/set1", {}, entity="cygnus-buccinator").id
    for stage in ("aggregation", "split", "train", "register"):
        deliver(
            coordinator,
            StageSucceeded(
                correlation_id=run,
                stage=stage,
                attempt=1,
                details={"model_name": "state_identifier.cygnus-buccinator", "model_version": "1"}
                if stage == "register"
                else {},
            ),
        )
    assert [e.name for e in events.events] == [EVENT_RUN_STARTED, EVENT_MODEL_REGISTERED]
    assert all(e.properties[ATTR_ENTITY] == "cygnus-buccinator" for e in events.events)
    assert ATTR_GROUP_ID not in events.events[0].properties


def test_a_permanent_failure_emits_run_failed_naming_the_stage_and_error_type(
    events: _EventCapture, otel: Otel, coordinator: Coordinator
) -> None:
    run = coordinator.start_run("state_identifier", "raw/set1", {"n_clusters": 3}).id
    deliver(
        coordinator,
        StageFailed(
            correlation_id=run,
            stage="aggregation",
            attempt=1,
            error="part-1.csv row 2: 'hot' is not a number",
            error_type="DataValidationError",
            retryable=False,
        ),
    )

    [failed] = events.named(EVENT_RUN_FAILED)
    assert failed.trace_id == run.int
    assert failed.properties[ATTR_STAGE] == "aggregation"
    assert failed.properties[ATTR_ERROR_TYPE] == "DataValidationError"
    assert failed.properties[ATTR_RUN_STATUS] == "failed"
    assert "part-1.csv" in failed.properties[telemetry.ATTR_ERROR]
    assert events.named(EVENT_RUN_SUCCEEDED) == []


def test_cancelling_emits_run_cancelled_once(
    events: _EventCapture, otel: Otel, coordinator: Coordinator
) -> None:
    run = coordinator.start_run("state_identifier", "raw/set1", {"n_clusters": 3}).id

    coordinator.cancel_run(run)

    [cancelled] = events.named(EVENT_RUN_CANCELLED)
    assert cancelled.trace_id == run.int
    assert cancelled.properties[ATTR_STAGE] == "aggregation"
    inputs = [s.attributes[ATTR_INPUT] for s in otel.finished(SPAN_COORDINATOR) if s.attributes]
    assert inputs == ["start_run", "cancel_run"]
