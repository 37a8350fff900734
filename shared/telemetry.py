"""OpenTelemetry for every service, exported to Application Insights, the console or nowhere.

**One trace per run.** A run's ``correlation_id`` (a UUID) *is* its trace id: ``uuid.int`` is
the 128-bit OTel trace id, so Application Insights' ``operation_Id`` equals
``correlation_id.hex`` in every service. Spans are started under a remote parent built from the
message's W3C ``traceparent`` (the coordinator derives one per command,
``command_traceparent``; a worker's events carry its stage span's) when its trace id is the
correlation id, and otherwise from the correlation id with a derived span id.

**Names** (the Application Insights workbook in ``deploy/appinsights/`` queries only these):

* spans (``requests`` table, kind CONSUMER): ``SPAN_STAGE`` — one per stage attempt in a worker;
  ``SPAN_COORDINATOR`` — one per input the coordinator decides on (run request, stage event,
  missed deadline);
* custom events (``customEvents``): ``EVENT_RUN_*`` when a decision changes a run's status,
  ``EVENT_MODEL_REGISTERED`` / ``EVENT_MODEL_PROMOTED`` when register / tag succeed, and
  ``EVENT_MODEL_PROMOTED`` with trigger ``manual`` (no run) when an operator changes a
  champion;
* metrics (``customMetrics``, seconds): ``METRIC_STAGE_DURATION``, ``METRIC_QUEUE_WAIT``;
* attributes / custom dimensions: the ``ATTR_*`` keys; values arrive as strings.

**Exporters** (``configure_telemetry``, once per process, from ``RETRAINER_TELEMETRY_EXPORTER``
and ``APPLICATIONINSIGHTS_CONNECTION_STRING``): ``none`` (the default: nothing is set up and
every helper here is a cheap no-op), ``console`` (OTel console exporters on stdout) and
``azure`` (``azure-monitor-opentelemetry``; chosen by itself when a connection string is set
and no exporter is named). The service's name becomes ``service.name``, i.e. App Insights'
``cloud_RoleName``. ``shutdown_telemetry`` flushes and stops the exporters.

Nothing is imported from OpenTelemetry, and nothing is configured, at import time: the pure
helpers (names, trace ids, traceparents) serve the dependency-free message contracts and state
machine, and the rest imports OpenTelemetry when first used (a no-op if it is not installed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, get_args
from uuid import UUID

from shared.messages import StageFailed
from shared.redaction import SENSITIVE_HEADERS

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from shared.messages import RunStage, StageEvent, StageSucceeded
    from shared.settings import CommonSettings

log = logging.getLogger(__name__)

# --- names ---------------------------------------------------------------------------------

SPAN_STAGE = "retrainer.stage"
SPAN_COORDINATOR = "retrainer.coordinator"

ATTR_CORRELATION_ID = "retrainer.correlation_id"
ATTR_STAGE = "retrainer.stage_name"
ATTR_RECIPE = "retrainer.recipe"
ATTR_ATTEMPT = "retrainer.attempt"
ATTR_OUTCOME = "retrainer.outcome"
ATTR_ERROR_TYPE = "retrainer.error_type"
ATTR_TRIGGER = "retrainer.trigger"
ATTR_RUN_STATUS = "retrainer.run_status"
ATTR_MODEL_NAME = "retrainer.model_name"
ATTR_MODEL_VERSION = "retrainer.model_version"
ATTR_PRIMARY_METRIC = "retrainer.primary_metric"
ATTR_PRIMARY_METRIC_VALUE = "retrainer.primary_metric_value"
# What the run's model is for (a species, a site), and the run group it belongs to.
ATTR_ENTITY = "retrainer.entity"
ATTR_GROUP_ID = "retrainer.group_id"
# A champion change: who made it (an operator's principal, or the tag stage of a run), why,
# and the champion it replaced.
ATTR_ACTOR = "retrainer.actor"
ATTR_REASON = "retrainer.reason"
ATTR_PREVIOUS_VERSION = "retrainer.previous_version"
# Beyond the workbook's names: the error message, what the coordinator decided on
# (start_run, cancel_run, retry_run, deadline_expired, stage_started, ...) and the worker.
ATTR_ERROR = "retrainer.error"
ATTR_INPUT = "retrainer.input"
ATTR_WORKER = "retrainer.worker"

EVENT_RUN_STARTED = "RunStarted"
EVENT_RUN_SUCCEEDED = "RunSucceeded"
EVENT_RUN_FAILED = "RunFailed"
EVENT_RUN_CANCELLED = "RunCancelled"
EVENT_MODEL_REGISTERED = "ModelRegistered"
EVENT_MODEL_PROMOTED = "ModelPromoted"
# A queued stage's deadline passed and the stage has no live worker (no heartbeat).
EVENT_STAGE_WITHOUT_WORKER = "StageWithoutWorker"

METRIC_STAGE_DURATION = "retrainer.stage.duration"
METRIC_QUEUE_WAIT = "retrainer.stage.queue_wait"
# Seconds since each recipe's last successful run (a gauge, by recipe): the "no successful run
# for N days" alert reads it, since a log alert cannot look further back than two days.
METRIC_SINCE_LAST_SUCCESS = "retrainer.run.since_last_success"

# Values of ATTR_OUTCOME. ``deferred``: the handler handed the work to something that reports
# later (an Azure ML job); that stage's outcome arrives as the coordinator's stage event.
OUTCOME_SUCCEEDED = "succeeded"
OUTCOME_FAILED = "failed"
OUTCOME_CACHED = "cached"
OUTCOME_DEFERRED = "deferred"
# The worker stopped during the stage and gave its message back to the bus.
OUTCOME_ABANDONED = "abandoned"
# The coordinator's decision on a missed queue deadline: the attempt waits on (its workers
# are busy with a backlog, or it has no live worker), nothing was given up.
OUTCOME_POSTPONED = "postponed"

SPAN_NAMES = frozenset({SPAN_STAGE, SPAN_COORDINATOR})
ATTRIBUTE_NAMES = frozenset(
    {
        ATTR_CORRELATION_ID,
        ATTR_STAGE,
        ATTR_RECIPE,
        ATTR_ATTEMPT,
        ATTR_OUTCOME,
        ATTR_ERROR_TYPE,
        ATTR_TRIGGER,
        ATTR_RUN_STATUS,
        ATTR_MODEL_NAME,
        ATTR_MODEL_VERSION,
        ATTR_PRIMARY_METRIC,
        ATTR_PRIMARY_METRIC_VALUE,
        ATTR_ENTITY,
        ATTR_GROUP_ID,
        ATTR_ACTOR,
        ATTR_REASON,
        ATTR_PREVIOUS_VERSION,
        ATTR_ERROR,
        ATTR_INPUT,
        ATTR_WORKER,
    }
)
EVENT_NAMES = frozenset(
    {
        EVENT_RUN_STARTED,
        EVENT_RUN_SUCCEEDED,
        EVENT_RUN_FAILED,
        EVENT_RUN_CANCELLED,
        EVENT_MODEL_REGISTERED,
        EVENT_MODEL_PROMOTED,
        EVENT_STAGE_WITHOUT_WORKER,
    }
)
METRIC_NAMES = frozenset({METRIC_STAGE_DURATION, METRIC_QUEUE_WAIT, METRIC_SINCE_LAST_SUCCESS})
OUTCOMES = frozenset(
    {
        OUTCOME_SUCCEEDED,
        OUTCOME_FAILED,
        OUTCOME_CACHED,
        OUTCOME_DEFERRED,
        OUTCOME_ABANDONED,
        OUTCOME_POSTPONED,
    }
)
ALL_NAMES = SPAN_NAMES | ATTRIBUTE_NAMES | EVENT_NAMES | METRIC_NAMES

# Custom events are log records of this logger carrying ``microsoft.custom_event.name``.
EVENTS_LOGGER = "retrainer.events"
_CUSTOM_EVENT_NAME = "microsoft.custom_event.name"
_SCOPE = "retrainer"

Exporter = Literal["none", "console", "azure", "otlp"]
EXPORTERS: tuple[Exporter, ...] = get_args(Exporter)

# --- trace context (pure) ------------------------------------------------------------------

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
SAMPLED = 0x01


@dataclass(frozen=True)
class TraceParent:
    trace_id: int
    span_id: int
    flags: int = SAMPLED

    def __str__(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"


def trace_id_of(correlation_id: UUID) -> int:
    """The OTel trace id of a run: its correlation id's 128 bits (``operation_Id`` is its hex)."""
    return correlation_id.int


def derived_span_id(correlation_id: UUID, *parts: object) -> int:
    """A span id derived from the run and ``parts``: deciding twice gives the same id."""
    digest = hashlib.sha256(":".join(map(str, (correlation_id, *parts))).encode()).hexdigest()
    return int(digest[:16], 16) or 1  # all zeros is the invalid span id


def command_traceparent(correlation_id: UUID, stage: str, attempt: int) -> str:
    """The traceparent of a stage command: the run's trace, a span id derived from the stage
    and attempt (so the state machine stays deterministic)."""
    return str(
        TraceParent(trace_id_of(correlation_id), derived_span_id(correlation_id, stage, attempt))
    )


def parse_traceparent(value: object) -> TraceParent | None:
    """A W3C traceparent (version 00, or a later one read as 00), or None if it is not one."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or int(trace_id, 16) == 0 or int(span_id, 16) == 0:
        return None
    return TraceParent(int(trace_id, 16), int(span_id, 16), int(flags, 16))


def run_parent(
    correlation_id: UUID, traceparent: str | None = None, *fallback_parts: object
) -> TraceParent:
    """The parent for a span of this run: ``traceparent`` if it is in the run's trace,
    else the run's trace with a span id derived from ``fallback_parts``. A traceparent of
    another trace is not followed: the trace id must stay the correlation id."""
    parsed = parse_traceparent(traceparent)
    if parsed is not None and parsed.trace_id == trace_id_of(correlation_id):
        return parsed
    return TraceParent(
        trace_id_of(correlation_id), derived_span_id(correlation_id, *fallback_parts), SAMPLED
    )


# --- configuration -------------------------------------------------------------------------


@dataclass
class _State:
    service_name: str | None = None
    exporter: Exporter = "none"
    # Set for console (and by ``use_providers`` in tests); None: OTel's global providers.
    tracer_provider: Any = None
    meter_provider: Any = None
    logger_provider: Any = None
    handlers: list[tuple[logging.Logger, logging.Handler]] = field(default_factory=list)
    owns_global_providers: bool = False
    tracer: Any = None
    instruments: Any = None


_state = _State()
_lock = threading.RLock()


def resolve_exporter(exporter: str | None, connection_string: str | None) -> Exporter:
    """``exporter`` if named, else ``azure`` with a connection string and ``none`` without."""
    if exporter is None or exporter == "":
        return "azure" if connection_string else "none"
    name = exporter.strip().lower()
    if name not in EXPORTERS:
        from shared.errors import ConfigurationError

        raise ConfigurationError(
            f"unknown telemetry exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}"
        )
    return cast(Exporter, name)


def configure_telemetry(
    service_name: str,
    *,
    exporter: str | None = None,
    connection_string: str | None = None,
    service_version: str | None = None,
    live_metrics: bool = True,
    offline_storage: bool = True,
    performance_counters: bool = True,
    entra_auth: bool = False,
) -> Exporter:
    """Set up tracing, metrics and custom events for this process; returns the exporter used.

    ``entra_auth``: the azure exporter authenticates with a Microsoft Entra token
    (``DefaultAzureCredential``), as a component with local authentication off requires.

    Call once, in the service's main (after ``logging.basicConfig``: the azure exporter adds a
    handler to the root logger, and basicConfig does nothing once the root has a handler).
    Once an exporter is set up, a second call changes nothing (OTel's global providers can be
    set only once per process); ``none`` sets up nothing and fixes nothing.
    """
    resolved = resolve_exporter(exporter, connection_string)
    with _lock:
        if _state.service_name is not None:
            if (_state.service_name, _state.exporter) != (service_name, resolved):
                log.warning(
                    "telemetry already configured as %s/%s; ignoring %s/%s",
                    _state.service_name,
                    _state.exporter,
                    service_name,
                    resolved,
                )
            return _state.exporter
        if resolved == "none":
            # Nothing to set up, and nothing fixed: a later call may still choose an exporter.
            return resolved
        if resolved == "azure":
            _configure_azure(
                service_name,
                connection_string=connection_string,
                service_version=service_version,
                live_metrics=live_metrics,
                offline_storage=offline_storage,
                performance_counters=performance_counters,
                entra_auth=entra_auth,
            )
        elif resolved == "console":
            _configure_console(service_name, service_version=service_version)
        elif resolved == "otlp":
            _configure_otlp(service_name, service_version=service_version)
        _state.service_name = service_name
        _state.exporter = resolved
        _state.tracer = _state.instruments = None
        # Custom events are INFO records: keep them whatever the service's log level.
        logging.getLogger(EVENTS_LOGGER).setLevel(logging.INFO)
        log.info("telemetry for %s exported to %s", service_name, resolved)
        return resolved


def configure_from_settings(service_name: str, settings: CommonSettings) -> Exporter:
    """``configure_telemetry`` from the ``RETRAINER_TELEMETRY_*`` settings and
    ``APPLICATIONINSIGHTS_CONNECTION_STRING``; the code version becomes ``service.version``."""
    secret = settings.applicationinsights_connection_string
    return configure_telemetry(
        service_name,
        exporter=settings.telemetry_exporter,
        connection_string=secret.get_secret_value() if secret else None,
        service_version=settings.code_version,
        live_metrics=settings.telemetry_live_metrics,
        offline_storage=settings.telemetry_offline_storage,
        performance_counters=settings.telemetry_performance_counters,
        entra_auth=settings.telemetry_entra_auth,
    )


def configured_exporter() -> Exporter | None:
    """The exporter ``configure_telemetry`` chose, or None before it was called."""
    return _state.exporter if _state.service_name is not None else None


def _resource(service_name: str, service_version: str | None) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    attributes: dict[str, str] = {SERVICE_NAME: service_name}
    if service_version:
        attributes[SERVICE_VERSION] = service_version
    # The service's own name wins over OTEL_SERVICE_NAME: it is the App Insights cloud role.
    return Resource.create(attributes)


def _configure_azure(
    service_name: str,
    *,
    connection_string: str | None,
    service_version: str | None,
    live_metrics: bool,
    offline_storage: bool,
    performance_counters: bool,
    entra_auth: bool,
) -> None:
    from shared.errors import ConfigurationError

    connection_string = connection_string or os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING")
    if not connection_string:
        raise ConfigurationError(
            "RETRAINER_TELEMETRY_EXPORTER=azure needs APPLICATIONINSIGHTS_CONNECTION_STRING"
        )
    from azure.monitor.opentelemetry import configure_azure_monitor

    options: dict[str, Any] = {
        "connection_string": connection_string,
        "resource": _resource(service_name, service_version),
        "enable_live_metrics": live_metrics,
        "disable_offline_storage": not offline_storage,
        "enable_performance_counters": performance_counters,
    }
    if entra_auth:
        from azure.identity import DefaultAzureCredential

        options["credential"] = DefaultAzureCredential()
    if "OTEL_TRACES_SAMPLER" not in os.environ:
        # The distro's default samples 5 traces/s; a run makes a handful of spans: keep all.
        options["sampling_ratio"] = 1.0
    # Container probes would fill the requests table.
    os.environ.setdefault("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "healthz,readyz")
    # Should request headers ever be captured (OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*),
    # credentials among them are recorded as [REDACTED].
    os.environ.setdefault(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", ",".join(SENSITIVE_HEADERS)
    )
    # The exporter logs every request it sends at INFO; exported, those records would be
    # exported again, forever (already while configure_azure_monitor runs, for seconds).
    for chatty in _CHATTY_LOGGERS:
        logger = logging.getLogger(chatty)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    root = logging.getLogger()
    before = set(root.handlers)
    configure_azure_monitor(**options)
    for handler in root.handlers:
        if handler not in before:
            # And whatever the levels: the exporters' own records are never exported.
            handler.addFilter(_ExporterLogFilter())
            _state.handlers.append((root, handler))
    _state.owns_global_providers = True


def _configure_console(service_name: str, *, service_version: str | None) -> None:
    from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    # Only the custom events as log records: every other log line is on the console already.
    _configure_sdk(
        service_name,
        service_version,
        ConsoleSpanExporter(),
        ConsoleMetricExporter(),
        ConsoleLogRecordExporter(),
        log_to=logging.getLogger(EVENTS_LOGGER),
    )


def _configure_otlp(service_name: str, *, service_version: str | None) -> None:
    """OTLP over HTTP/protobuf to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (an OpenTelemetry collector,
    or the Aspire dashboard in docker-compose): spans, metrics and every log record."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    _configure_sdk(
        service_name,
        service_version,
        OTLPSpanExporter(),
        OTLPMetricExporter(),
        OTLPLogExporter(),
        log_to=logging.getLogger(),
    )


def _configure_sdk(
    service_name: str,
    service_version: str | None,
    span_exporter: Any,
    metric_exporter: Any,
    log_exporter: Any,
    *,
    log_to: logging.Logger,
) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = _resource(service_name, service_version)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)]
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    set_logger_provider(logger_provider)
    handler = LoggingHandler(logger_provider=logger_provider)
    # The exporters' own records are never exported (that would feed itself).
    handler.addFilter(_ExporterLogFilter())
    log_to.addHandler(handler)
    _state.handlers.append((log_to, handler))
    _state.owns_global_providers = True


_CHATTY_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.monitor.opentelemetry",
)


class _ExporterLogFilter(logging.Filter):
    """Keeps the exporters' (and Azure SDKs') chatter out of the exported logs."""

    _NEVER = ("azure.monitor.opentelemetry", "azure.core.pipeline", "opentelemetry")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self._NEVER):
            return False
        return not (record.name.startswith(("azure.", "urllib3")) and record.levelno < 30)


def _providers() -> tuple[Any, Any, Any]:
    """The tracer, meter and logger providers in use (ours, or OTel's global ones)."""
    from opentelemetry import metrics, trace
    from opentelemetry._logs import get_logger_provider

    return (
        _state.tracer_provider or trace.get_tracer_provider(),
        _state.meter_provider or metrics.get_meter_provider(),
        _state.logger_provider or get_logger_provider(),
    )


def force_flush(timeout_s: float = 10.0) -> bool:
    """Export everything pending now; True if every provider finished in time."""
    if not _active():
        return True
    ok = True
    for provider in _providers():
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            try:
                ok = bool(flush(int(timeout_s * 1000))) and ok
            except Exception:
                log.exception("flushing telemetry failed")
                ok = False
    return ok


def shutdown_telemetry(timeout_s: float = 10.0) -> None:
    """Flush and stop the exporters (on SIGTERM/stop, before the process exits). Later
    telemetry is dropped; calling it again, or without ``configure_telemetry``, does nothing."""
    with _lock:
        if not _state.owns_global_providers:
            return
        force_flush(timeout_s)
        for logger, handler in _state.handlers:
            logger.removeHandler(handler)
        _state.handlers.clear()
        for provider in _providers():
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                try:
                    stop()
                except Exception:
                    log.exception("stopping telemetry failed")
        _state.owns_global_providers = False


@contextmanager
def use_providers(
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Iterator[None]:
    """Send this module's spans and metrics to the given providers for the block (tests:
    in-memory exporters without touching OTel's process-wide providers)."""
    with _lock:
        saved = (_state.tracer_provider, _state.meter_provider, _state.tracer, _state.instruments)
        _state.tracer_provider, _state.meter_provider = tracer_provider, meter_provider
        _state.tracer = _state.instruments = None
    try:
        yield
    finally:
        with _lock:
            (
                _state.tracer_provider,
                _state.meter_provider,
                _state.tracer,
                _state.instruments,
            ) = saved


# --- runtime helpers -----------------------------------------------------------------------


_OTEL_AVAILABLE: bool | None = None


def _otel_available() -> bool:
    global _OTEL_AVAILABLE
    if _OTEL_AVAILABLE is None:
        try:
            import opentelemetry.trace  # noqa: F401
        except ImportError:
            _OTEL_AVAILABLE = False
        else:
            _OTEL_AVAILABLE = True
    return _OTEL_AVAILABLE


def _active() -> bool:
    """Whether spans and metrics can go anywhere (OTel installed, and configured or a test's
    providers in place); otherwise the helpers skip even OTel's no-op calls."""
    test_providers = _state.tracer_provider is not None or _state.meter_provider is not None
    return _otel_available() and (_state.exporter != "none" or test_providers)


def _tracer() -> Tracer:
    if _state.tracer is None:
        from opentelemetry import trace

        _state.tracer = trace.get_tracer(_SCOPE, tracer_provider=_state.tracer_provider)
    tracer: Tracer = _state.tracer
    return tracer


@dataclass(frozen=True)
class _Instruments:
    stage_duration: Histogram
    queue_wait: Histogram


def _instruments() -> _Instruments:
    if _state.instruments is None:
        from opentelemetry import metrics

        meter = metrics.get_meter(_SCOPE, meter_provider=_state.meter_provider)
        _state.instruments = _Instruments(
            stage_duration=meter.create_histogram(
                METRIC_STAGE_DURATION,
                unit="s",
                description="time a worker spent on one stage attempt, by stage/recipe/outcome",
            ),
            queue_wait=meter.create_histogram(
                METRIC_QUEUE_WAIT,
                unit="s",
                description="time from a stage command's enqueueing to its worker starting it",
            ),
        )
    instruments: _Instruments = _state.instruments
    return instruments


def observe_last_successes(
    last_successes: Callable[[], Mapping[tuple[str, str | None], datetime]],
) -> None:
    """Report ``METRIC_SINCE_LAST_SUCCESS`` at every metrics export: for each model in
    ``last_successes()`` ((recipe, entity or None) -> when its last successful run finished),
    the age of that success, with the recipe and the entity (if any) as attributes. Call once
    per process, after ``configure_telemetry``; a no-op when telemetry is off. A failing
    ``last_successes`` skips that export with a warning."""
    if not _active():
        return
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    def observe(_options: CallbackOptions) -> list[Observation]:
        try:
            successes = last_successes()
        except Exception as exc:
            log.warning("cannot read the last successful runs: %s", exc)
            return []
        now = datetime.now(UTC)
        return [
            Observation(
                max(0.0, (now - at).total_seconds()),
                {ATTR_RECIPE: recipe}
                if entity is None
                else {ATTR_RECIPE: recipe, ATTR_ENTITY: entity},
            )
            for (recipe, entity), at in successes.items()
        ]

    meter = metrics.get_meter(_SCOPE, meter_provider=_state.meter_provider)
    meter.create_observable_gauge(
        METRIC_SINCE_LAST_SUCCESS,
        callbacks=[observe],
        unit="s",
        description="time since the last successful run of each recipe (and entity)",
    )


def _context_of(parent: TraceParent) -> Context:
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        TraceFlags,
        set_span_in_context,
    )

    span_context = SpanContext(
        trace_id=parent.trace_id,
        span_id=parent.span_id,
        is_remote=True,
        trace_flags=TraceFlags(parent.flags & 0xFF),
    )
    return set_span_in_context(NonRecordingSpan(span_context))


def _clean(attributes: Mapping[str, object]) -> dict[str, str | bool | int | float]:
    """OTel attribute values: primitives kept, None dropped, anything else as text."""
    cleaned: dict[str, str | bool | int | float] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        cleaned[key] = value if isinstance(value, str | bool | int | float) else str(value)
    return cleaned


class SpanHandle:
    """One of this module's spans (or nothing, when telemetry is off)."""

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, object]) -> None:
        if self._span is not None:
            self._span.set_attributes(_clean(attributes))

    def fail(self, error_type: str, description: str | None = None) -> None:
        """Mark the span failed (App Insights: ``success == false``)."""
        if self._span is not None:
            from opentelemetry.trace import Status, StatusCode

            self._span.set_attributes(_clean({ATTR_ERROR_TYPE: error_type}))
            if description:
                self._span.set_attribute(ATTR_ERROR, description[:1024])
            self._span.set_status(Status(StatusCode.ERROR, description or error_type))

    @property
    def traceparent(self) -> str | None:
        """This span's W3C traceparent, for the messages it sends."""
        if self._span is None:
            return None
        context = self._span.get_span_context()
        if not context.is_valid:
            return None
        return str(TraceParent(context.trace_id, context.span_id, int(context.trace_flags)))


class StageTelemetry(SpanHandle):
    """The stage span of one worker attempt; ``finish`` records the outcome."""

    outcome: str | None = None

    def finish(self, event: StageSucceeded | StageFailed | None) -> None:
        """The stage's event, or None when the handler deferred the work."""
        if event is None:
            self.outcome = OUTCOME_DEFERRED
        elif isinstance(event, StageFailed):
            self.outcome = OUTCOME_FAILED
            self.fail(event.error_type, event.error)
        else:
            self.outcome = OUTCOME_CACHED if event.cached else OUTCOME_SUCCEEDED
        self.set({ATTR_OUTCOME: self.outcome})

    def abandoned(self) -> None:
        """The worker stopped mid-stage; the message goes to another delivery."""
        self.outcome = OUTCOME_ABANDONED
        self.set({ATTR_OUTCOME: self.outcome})


@contextmanager
def stage_span(
    command: RunStage,
    *,
    enqueued_time: datetime | None = None,
    worker: str | None = None,
    started_at: datetime | None = None,
) -> Iterator[StageTelemetry]:
    """The span of one stage attempt in a worker (``SPAN_STAGE``, kind CONSUMER) as the
    current span, and its metrics: the queue wait now, the duration at the end.

    ``started_at``: the work began earlier, elsewhere (a remote training job finished now);
    the span and the duration metric start there."""
    if not _active():
        yield StageTelemetry(None)
        return
    from opentelemetry.trace import SpanKind

    labels = {ATTR_STAGE: command.stage, ATTR_RECIPE: command.recipe}
    instruments = _instruments()
    if enqueued_time is not None:
        if enqueued_time.tzinfo is None:
            enqueued_time = enqueued_time.replace(tzinfo=UTC)
        waited = (datetime.now(UTC) - enqueued_time).total_seconds()
        instruments.queue_wait.record(max(waited, 0.0), labels)
    parent = run_parent(command.correlation_id, command.traceparent, command.stage, command.attempt)
    earlier_s = 0.0
    start_time = None
    if started_at is not None:
        earlier_s = max((datetime.now(UTC) - started_at).total_seconds(), 0.0)
        start_time = int(started_at.timestamp() * 1e9)
    started = time.monotonic() - earlier_s
    with _tracer().start_as_current_span(
        SPAN_STAGE,
        context=_context_of(parent),
        kind=SpanKind.CONSUMER,
        start_time=start_time,
        attributes=_clean(
            {
                ATTR_CORRELATION_ID: str(command.correlation_id),
                **labels,
                ATTR_ATTEMPT: command.attempt,
                ATTR_WORKER: worker,
            }
        ),
    ) as span:
        stage = StageTelemetry(span)
        try:
            yield stage
        except BaseException as exc:
            stage.outcome = OUTCOME_FAILED
            stage.set({ATTR_OUTCOME: OUTCOME_FAILED, ATTR_ERROR_TYPE: type(exc).__name__})
            raise
        finally:
            instruments.stage_duration.record(
                time.monotonic() - started,
                {**labels, ATTR_OUTCOME: stage.outcome or "unknown"},
            )


@contextmanager
def coordinator_span(
    correlation_id: UUID,
    input_name: str,
    *,
    traceparent: str | None = None,
    stage: str | None = None,
    attempt: int | None = None,
) -> Iterator[SpanHandle]:
    """The span of one coordinator decision on a run (``SPAN_COORDINATOR``, kind CONSUMER) as
    the current span: the run events it emits land in the run's trace. The span that was
    current (an HTTP request's) is linked."""
    if not _active():
        yield SpanHandle(None)
        return
    from opentelemetry.trace import Link, SpanKind, get_current_span

    current = get_current_span().get_span_context()
    links = [Link(current)] if current.is_valid else []
    parent = run_parent(correlation_id, traceparent)
    with _tracer().start_as_current_span(
        SPAN_COORDINATOR,
        context=_context_of(parent),
        kind=SpanKind.CONSUMER,
        links=links,
        attributes=_clean(
            {
                ATTR_CORRELATION_ID: str(correlation_id),
                ATTR_INPUT: input_name,
                ATTR_STAGE: stage,
                ATTR_ATTEMPT: attempt,
            }
        ),
    ) as span:
        yield SpanHandle(span)


def current_span() -> SpanHandle:
    """The current span (a no-op handle when telemetry is off or no span is recording)."""
    if not _active():
        return SpanHandle(None)
    from opentelemetry.trace import get_current_span

    span = get_current_span()
    return SpanHandle(span if span.is_recording() else None)


def current_traceparent(correlation_id: UUID) -> str | None:
    """The current span's traceparent if it is in this run's trace, else None."""
    if not _active():
        return None
    from opentelemetry.trace import get_current_span

    context = get_current_span().get_span_context()
    if not context.is_valid or context.trace_id != trace_id_of(correlation_id):
        return None
    return str(TraceParent(context.trace_id, context.span_id, int(context.trace_flags)))


EventT = TypeVar("EventT", bound="StageEvent")


def in_current_trace(event: EventT) -> EventT:
    """``event`` carrying the current span's traceparent when that span is in its run's trace
    (so whoever handles it becomes the span's child); unchanged otherwise."""
    traceparent = current_traceparent(event.correlation_id)
    if traceparent is None:
        return event
    return event.model_copy(update={"traceparent": traceparent})


_events_log = logging.getLogger(EVENTS_LOGGER)


def emit_event(name: str, properties: Mapping[str, object]) -> None:
    """A custom event (``customEvents``) in the current trace context; None values dropped.

    With the console or no exporter it is just an INFO line of the ``retrainer.events``
    logger."""
    cleaned = _clean(properties)
    _events_log.info(
        "%s %s",
        name,
        " ".join(f"{key.removeprefix('retrainer.')}={value}" for key, value in cleaned.items()),
        extra={_CUSTOM_EVENT_NAME: name, **cleaned},
    )
