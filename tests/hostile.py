"""Hostile inputs the suite feeds to every consumer and endpoint: each must be refused with a
reason (a 4xx, a dead-lettered message), never crash a handler or hold up valid neighbours.

Found by a fuzz and fault campaign against the embedded stack (issue 11): JSON nested 100,000
levels deep, an integer of 5,000 digits, a field of the wrong JSON type, bytes that are not
UTF-8, and a schema version that is not a number.
"""

from __future__ import annotations

import json
from typing import Any

from shared.bus.port import OutgoingMessage, PropertyValue
from shared.limits import MAX_MESSAGE_BYTES

DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b"9" * 5000


def _message(
    message_id: str, body: bytes, properties: dict[str, PropertyValue] | None = None
) -> OutgoingMessage:
    return OutgoingMessage(
        body=body, message_id=message_id, application_properties=properties or {}
    )


def undecodable_messages(message_type: str) -> list[OutgoingMessage]:
    """Messages that claim to be ``message_type`` (v1) but cannot be decoded into it."""
    v1: dict[str, PropertyValue] = {"message_type": message_type, "schema_version": 1}
    return [
        _message("not-json", b"{not json", v1),
        _message("not-utf8", b'{"stage": "\xff\xfe"}', v1),
        _message("deep", DEEP_ARRAY, v1),
        _message("huge-int", b'{"attempt": ' + HUGE_INT + b"}", v1),
        _message("too-large", b'{"x": "' + b"a" * MAX_MESSAGE_BYTES + b'"}', v1),
        _message("wrong-types", b'{"correlation_id": [], "attempt": {}}', v1),
        _message(
            "infinite-version", b"{}", {"message_type": message_type, "schema_version": 1e309}
        ),
        _message("unknown-type", b"{}", {"message_type": 7, "schema_version": 1}),
    ]


def hostile_json() -> list[bytes]:
    """Bodies no JSON event consumer can read."""
    return [b"{not json", b"\xff\xfe", DEEP_ARRAY, b'{"n": ' + HUGE_INT + b"}"]


def unreadable_blob_events(valid: dict[str, Any]) -> list[bytes]:
    """``hostile_json`` and ``valid`` (an Event Grid BlobCreated event) with a field of the
    wrong type or size, or repeated beyond an Event Grid batch."""
    data = valid["data"]
    huge_length = json.dumps(valid).replace('"contentLength": ', '"contentLength": 1' + "0" * 4999)
    return [
        *hostile_json(),
        huge_length.encode(),
        json.dumps({**valid, "data": {**data, "api": []}}).encode(),
        json.dumps({**valid, "data": {**data, "contentLength": {"n": 1}}}).encode(),
        json.dumps([valid] * 6000).encode(),
    ]


def unreadable_compute_events(valid: dict[str, Any]) -> list[bytes]:
    """``hostile_json`` and ``valid`` (an Azure ML RunStatusChanged event) with a field of
    the wrong type or shape."""
    data = valid["data"]
    return [
        *hostile_json(),
        json.dumps({**valid, "data": {**data, "runId": []}}).encode(),
        json.dumps({**valid, "data": {**data, "runId": "../../" + data["runId"]}}).encode(),
        json.dumps({**valid, "data": [data]}).encode(),
    ]
