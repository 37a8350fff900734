"""shared.telemetry: the names, trace ids from correlation ids, traceparents on messages, and
configuration (the no-op default, exporter choice, idempotence)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from shared import telemetry
from shared.errors import ConfigurationError
from shared.messages import RunStage, StageSucceeded, decode, encode
from shared.settings import CommonSettings
from shared.telemetry import (
    ALL_NAMES,
    ATTRIBUTE_NAMES,
    EVENT_NAMES,
    METRIC_NAMES,
    SPAN_NAMES,
    TraceParent,
    command_traceparent,
    parse_traceparent,
    run_parent,
    trace_id_of,
)

REPO = Path(__file__).parents[2]
RUN = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")


# --- names ---------------------------------------------------------------------------------


def test_names_are_the_agreed_ones() -> None:
    assert {"retrainer.stage", "retrainer.coordinator"} == SPAN_NAMES
    assert {
        "RunStarted",
        "RunSucceeded",
        "RunFailed",
        "RunCancelled",
        "ModelRegistered",
        "ModelPromoted",
        "StageWithoutWorker",
    } == EVENT_NAMES
    assert {
        "retrainer.stage.duration",
        "retrainer.stage.queue_wait",
        "retrainer.run.since_last_success",
    } == METRIC_NAMES
    assert {
        "retrainer.correlation_id",
        "retrainer.stage_name",
        "retrainer.recipe",
        "retrainer.attempt",
        "retrainer.outcome",
        "retrainer.error_type",
        "retrainer.trigger",
        "retrainer.run_status",
        "retrainer.model_name",
        "retrainer.model_version",
        "retrainer.primary_metric",
        "retrainer.primary_metric_value",
    } <= ATTRIBUTE_NAMES
    assert all(name.startswith("retrainer.") for name in ATTRIBUTE_NAMES)
    assert ALL_NAMES == SPAN_NAMES | EVENT_NAMES | METRIC_NAMES | ATTRIBUTE_NAMES
    assert {"succeeded", "failed", "cached"} <= telemetry.OUTCOMES


# --- trace context -------------------------------------------------------------------------


def test_the_correlation_id_is_the_trace_id() -> None:
    assert trace_id_of(RUN) == RUN.int
    assert f"{trace_id_of(RUN):032x}" == RUN.hex  # App Insights' operation_Id


def test_command_traceparent_is_deterministic_and_in_the_run_trace() -> None:
    value = command_traceparent(RUN, "train", 2)
    parsed = parse_traceparent(value)

    assert value == command_traceparent(RUN, "train", 2)
    assert value != command_traceparent(RUN, "train", 3)
    assert parsed is not None and parsed.trace_id == RUN.int and parsed.flags == 1
    # The coordinator's derivation before it moved here: commands keep their traceparents.
    legacy = hashlib.sha256(f"{RUN}:train:2".encode()).hexdigest()[:16]
    assert value == f"00-{RUN.hex}-{legacy}-01"


@pytest.mark.parametrize(
    "value",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    ],
)
def test_traceparent_round_trips(value: str) -> None:
    parsed = parse_traceparent(value)
    assert parsed is not None
    assert str(parsed) == value
    assert parse_traceparent(str(parsed)) == parsed


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # invalid span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",  # not hex
    ],
)
def test_what_is_not_a_traceparent_parses_to_none(value: object) -> None:
    assert parse_traceparent(value) is None


def test_run_parent_follows_a_traceparent_of_the_run_and_nothing_else() -> None:
    own = command_traceparent(RUN, "split", 1)
    foreign = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    assert str(run_parent(RUN, own, "split", 1)) == own
    from_foreign = run_parent(RUN, foreign, "split", 1)
    from_nothing = run_parent(RUN, None, "split", 1)
    assert from_foreign == from_nothing
    assert from_nothing == TraceParent(RUN.int, from_nothing.span_id, 1)
    # Without a traceparent a worker derives what the coordinator would have sent.
    assert str(from_nothing) == own


# --- messages ------------------------------------------------------------------------------


def test_encode_puts_the_traceparent_in_diagnostic_id_and_traceparent() -> None:
    traceparent = command_traceparent(RUN, "tag", 1)
    wire = encode(
        RunStage(correlation_id=RUN, stage="tag", attempt=1, recipe="r", traceparent=traceparent)
    )

    assert wire.application_properties["Diagnostic-Id"] == traceparent
    assert wire.application_properties["traceparent"] == traceparent
    decoded = decode(wire.body, wire.application_properties)
    assert isinstance(decoded, RunStage) and decoded.traceparent == traceparent


def test_messages_without_a_traceparent_carry_none_and_still_decode() -> None:
    wire = encode(StageSucceeded(correlation_id=RUN, stage="split", attempt=1))

    assert "Diagnostic-Id" not in wire.application_properties
    assert "traceparent" not in wire.application_properties
    assert decode(wire.body, wire.application_properties).traceparent is None
    # What an older sender wrote: only the type and version as properties.
    minimal = {"message_type": "stage_succeeded", "schema_version": 1}
    assert decode(wire.body, minimal) == decode(wire.body, wire.application_properties)


# --- configuration -------------------------------------------------------------------------


def test_exporter_is_azure_with_a_connection_string_unless_one_is_named() -> None:
    assert telemetry.resolve_exporter(None, None) == "none"
    assert telemetry.resolve_exporter(None, "InstrumentationKey=x") == "azure"
    assert telemetry.resolve_exporter("console", "InstrumentationKey=x") == "console"
    assert telemetry.resolve_exporter("NONE", "InstrumentationKey=x") == "none"
    assert telemetry.resolve_exporter("otlp", "InstrumentationKey=x") == "otlp"
    with pytest.raises(ConfigurationError, match="unknown telemetry exporter 'jaeger'"):
        telemetry.resolve_exporter("jaeger", None)


def test_settings_read_the_standard_connection_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", "InstrumentationKey=abc")
    monkeypatch.setenv("RETRAINER_TELEMETRY_LIVE_METRICS", "false")
    settings = CommonSettings()

    secret = settings.applicationinsights_connection_string
    assert secret is not None
    assert secret.get_secret_value() == "InstrumentationKey=abc"
    assert settings.telemetry_exporter is None
    assert settings.telemetry_live_metrics is False
    monkeypatch.setenv("RETRAINER_TELEMETRY_EXPORTER", "none")
    assert CommonSettings().telemetry_exporter == "none"


def test_none_exporter_sets_up_nothing_and_its_helpers_do_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from opentelemetry import trace

    assert telemetry.configure_telemetry("split", exporter="none") == "none"
    assert telemetry.configure_telemetry("split") == "none"

    assert telemetry.configured_exporter() is None
    assert not isinstance(trace.get_tracer_provider(), _sdk_tracer_provider())
    command = RunStage(correlation_id=RUN, stage="split", attempt=1, recipe="r")
    with telemetry.stage_span(command) as span:
        span.finish(None)
        assert span.traceparent is None
        assert telemetry.current_traceparent(RUN) is None
    with caplog.at_level(logging.INFO, logger=telemetry.EVENTS_LOGGER):
        telemetry.emit_event("RunStarted", {"retrainer.trigger": "api", "retrainer.recipe": None})
    assert [r.getMessage() for r in caplog.records] == ["RunStarted trigger=api"]
    assert telemetry.force_flush() is True
    telemetry.shutdown_telemetry()


def _sdk_tracer_provider() -> type:
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider


def test_azure_without_a_connection_string_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    with pytest.raises(ConfigurationError, match="APPLICATIONINSIGHTS_CONNECTION_STRING"):
        telemetry.configure_telemetry("tag", exporter="azure")
    assert telemetry.configured_exporter() is None


_CONSOLE_SCRIPT = """
import logging, uuid
logging.basicConfig(level=logging.WARNING)
from shared import telemetry
from shared.messages import RunStage

first = telemetry.configure_telemetry("split", exporter="console")
again = telemetry.configure_telemetry("split", exporter="console")
other = telemetry.configure_telemetry("train", exporter="none")
print("EXPORTERS", first, again, other, telemetry.configured_exporter(), flush=True)
run = uuid.UUID("{run}")
command = RunStage(correlation_id=run, stage="split", attempt=1, recipe="r",
                   traceparent=telemetry.command_traceparent(run, "split", 1))
with telemetry.stage_span(command, worker="w1") as span:
    telemetry.emit_event("RunStarted", {{"retrainer.trigger": "api"}})
    print("TRACEPARENT", telemetry.current_traceparent(run), flush=True)
    span.finish(None)
telemetry.shutdown_telemetry()
telemetry.shutdown_telemetry()
print("DONE", flush=True)
"""


def test_console_exporter_is_configured_once_and_exports_in_the_run_trace() -> None:
    """In a fresh interpreter: OTel's global providers can be set once per process."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CONSOLE_SCRIPT.format(run=RUN))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    out = result.stdout

    assert result.returncode == 0, result.stderr
    assert "EXPORTERS console console console console" in out
    assert "telemetry already configured as split/console; ignoring train/none" in result.stderr
    printed = next(line.split()[1] for line in out.splitlines() if line.startswith("TRACEPARENT"))
    stage = parse_traceparent(printed)
    command = parse_traceparent(command_traceparent(RUN, "split", 1))
    assert stage is not None and command is not None
    span = _first_json_object_with(out, '"name": "retrainer.stage"')
    assert span["context"]["trace_id"] == f"0x{RUN.hex}" == f"0x{stage.trace_id:032x}"
    assert span["context"]["span_id"] == f"0x{stage.span_id:016x}"
    assert span["parent_id"] == f"0x{command.span_id:016x}"
    assert span["kind"] == "SpanKind.CONSUMER"
    assert span["attributes"]["retrainer.outcome"] == "deferred"
    assert span["attributes"]["retrainer.worker"] == "w1"
    assert span["resource"]["attributes"]["service.name"] == "split"
    event = _first_json_object_with(out, '"body": "RunStarted')
    assert event["trace_id"] == f"0x{RUN.hex}"
    assert event["attributes"]["microsoft.custom_event.name"] == "RunStarted"
    assert out.rstrip().endswith("DONE")


def _first_json_object_with(text: str, needle: str) -> dict[str, Any]:
    """The console exporters print indented JSON objects one after another."""
    decoder = json.JSONDecoder()
    index = 0
    while (start := text.find("{", index)) >= 0:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            index = start + 1
            continue
        if needle in text[start:end]:
            assert isinstance(obj, dict)
            return obj
        index = end
    raise AssertionError(f"no JSON object with {needle} in:\n{text}")
