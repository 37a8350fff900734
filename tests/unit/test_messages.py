import uuid
from pathlib import Path

import pytest

from shared.errors import MalformedMessageError
from shared.messages import RunStage, StageFailed, StageSucceeded, decode, encode
from shared.schemas import render

RUN = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_round_trip_keeps_type_fields_and_correlation() -> None:
    command = RunStage(
        correlation_id=RUN,
        stage="train",
        attempt=2,
        recipe="r",
        params={"k": 3},
        inputs={"split": "artifacts/cache/split/abc"},
        traceparent="00-12345678123456781234567812345678-0123456789abcdef-01",
    )
    wire = encode(command)

    assert wire.message_id == f"{RUN}:train:2"
    assert wire.correlation_id == str(RUN)
    assert wire.application_properties["message_type"] == "run_stage"
    assert wire.application_properties["traceparent"] == command.traceparent
    assert decode(wire.body, wire.application_properties) == command


def test_event_ids_are_deterministic_per_run_stage_attempt_and_outcome() -> None:
    ok = StageSucceeded(correlation_id=RUN, stage="split", attempt=1)
    failed = StageFailed(
        correlation_id=RUN, stage="split", attempt=1, error="x", error_type="E", retryable=False
    )
    assert ok.message_id == f"{RUN}:split:1:succeeded"
    assert failed.message_id == f"{RUN}:split:1:failed"
    assert StageSucceeded(correlation_id=RUN, stage="split", attempt=1).message_id == ok.message_id


@pytest.mark.parametrize(
    ("body", "properties", "complaint"),
    [
        (b"{}", {"message_type": "launch_rockets", "schema_version": 1}, "unknown message_type"),
        (
            b"{}",
            {"message_type": "run_stage", "schema_version": 3},
            "schema_version 3 is not supported",
        ),
        (b"{}", {"message_type": "run_stage", "schema_version": "one"}, "not an integer"),
        (b"\xff", {"message_type": "run_stage", "schema_version": 1}, "not JSON"),
        (b"[]", {"message_type": "run_stage", "schema_version": 1}, "not a JSON object"),
        (b'{"correlation_id": "x"}', {"message_type": "run_stage", "schema_version": 1}, "invalid"),
    ],
)
def test_undecodable_messages_raise_malformed_with_the_reason(
    body: bytes, properties: dict[str, object], complaint: str
) -> None:
    with pytest.raises(MalformedMessageError, match=complaint):
        decode(body, properties)


def test_unknown_fields_are_refused_rather_than_dropped() -> None:
    wire = encode(RunStage(correlation_id=RUN, stage="tag", attempt=1, recipe="r"))
    body = wire.body.replace(b'"recipe"', b'"surprise":1,"recipe"')
    with pytest.raises(MalformedMessageError, match="surprise"):
        decode(body, wire.application_properties)


def test_exported_schemas_in_docs_match_the_code() -> None:
    exported = Path(__file__).parents[2] / "docs" / "messages"
    for name, text in render().items():
        assert (exported / name).read_text() == text, (
            f"docs/messages/{name} is stale: run python -m shared.schemas docs/messages"
        )


def test_a_v1_run_stage_is_read_as_no_entity_and_not_forced() -> None:
    body = b'{"correlation_id": "%s", "stage": "train", "attempt": 1, "recipe": "r"}' % (
        str(RUN).encode()
    )
    command = decode(body, {"message_type": "run_stage", "schema_version": 1})
    assert isinstance(command, RunStage)
    assert (command.entity, command.force) == (None, False)
