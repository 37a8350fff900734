"""Parsing Event Grid BlobCreated events in both schemas: valid, malformed, ignored."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.blobs.port import BlobProperties
from shared.events import (
    BlobCreated,
    IgnoredEvent,
    MalformedEventError,
    SubscriptionValidation,
    blob_created_event,
    blob_event_id,
    blob_event_message,
    decode_events,
    parse_event,
    parse_events,
)

ACCOUNT = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct"
SUBJECT = "/blobServices/default/containers/datasets/blobs/state-identifier/2025-03-01/part-1.csv"


def event_grid(**overrides: Any) -> dict[str, Any]:
    """An Event Grid-schema BlobCreated as Azure Storage sends it."""
    event: dict[str, Any] = {
        "topic": ACCOUNT,
        "subject": SUBJECT,
        "eventType": "Microsoft.Storage.BlobCreated",
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "data": {
            "api": "PutBlockList",
            "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca89d3e",
            "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
            "eTag": "0x8D4BCC2E4835CD0",
            "contentType": "text/csv",
            "contentLength": 524288,
            "blobType": "BlockBlob",
            "url": "https://acct.blob.core.windows.net/datasets/state-identifier/2025-03-01/part-1.csv",
            "sequencer": "00000000000004420000000000028963",
            "storageDiagnostics": {"batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"},
        },
        "dataVersion": "",
        "metadataVersion": "1",
        "eventTime": "2025-03-01T12:00:00.9584103Z",
    }
    event.update(overrides)
    return event


def cloud_event(**overrides: Any) -> dict[str, Any]:
    """The same event in CloudEvents 1.0 schema."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "831e1650-001e-001b-66ab-eeb76e069631",
        "source": ACCOUNT,
        "type": "Microsoft.Storage.BlobCreated",
        "subject": SUBJECT,
        "time": "2025-03-01T12:00:00.9584103Z",
        "dataschema": "#",
        "data": copy.deepcopy(event_grid()["data"]),
    }
    event.update(overrides)
    return event


EXPECTED = BlobCreated(
    event_id="831e1650-001e-001b-66ab-eeb76e069631",
    container="datasets",
    blob_name="datasets/state-identifier/2025-03-01/part-1.csv",
    etag="0x8D4BCC2E4835CD0",
    size=524288,
    event_time=datetime(2025, 3, 1, 12, 0, 0, 958410, tzinfo=UTC),
    source=ACCOUNT,
)


def with_data(make: Any, **data: Any) -> dict[str, Any]:
    event: dict[str, Any] = make()
    event["data"] = {**event["data"], **data}
    return event


def without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


# --- valid ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [event_grid, cloud_event], ids=["eventgrid", "cloudevents"])
def test_a_blob_created_event_becomes_a_typed_blob_created(make: Any) -> None:
    assert parse_event(make()) == EXPECTED


def test_an_event_grid_webhook_batch_is_an_array() -> None:
    second = event_grid(id="second", subject=SUBJECT.replace("part-1", "part-2"))
    parsed = decode_events(json.dumps([event_grid(), second]).encode())
    assert [e.blob_name for e in parsed if isinstance(e, BlobCreated)] == [
        EXPECTED.blob_name,
        "datasets/state-identifier/2025-03-01/part-2.csv",
    ]


def test_a_cloudevents_batch_and_a_single_structured_cloudevent() -> None:
    assert decode_events(json.dumps([cloud_event(), cloud_event()])) == [EXPECTED, EXPECTED]
    assert decode_events(json.dumps(cloud_event())) == [EXPECTED]


def test_quoted_etags_lose_their_quotes_and_nested_paths_keep_their_folders() -> None:
    event = with_data(event_grid, eTag='"0x8D4BCC2E4835CD0"')
    event["subject"] = "/blobServices/default/containers/datasets/blobs/a/b/c/d.json"
    parsed = parse_event(event)
    assert isinstance(parsed, BlobCreated)
    assert parsed.etag == "0x8D4BCC2E4835CD0"
    assert parsed.blob_name == "datasets/a/b/c/d.json"


def test_an_event_grid_event_without_topic_is_accepted() -> None:
    parsed = parse_event(without(event_grid(), "topic"))
    assert isinstance(parsed, BlobCreated) and parsed.source == ""


def test_the_subscription_validation_event_carries_its_code() -> None:
    event = event_grid(
        eventType="Microsoft.EventGrid.SubscriptionValidationEvent",
        subject="",
        data={
            "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net/api/...",
        },
    )
    assert parse_events([event]) == [
        SubscriptionValidation(
            event["id"],
            "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
            "https://rp-eastus2.eventgrid.azure.net/api/...",
        )
    ]


# --- ignored -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        event_grid(eventType="Microsoft.Storage.BlobDeleted"),
        cloud_event(type="Microsoft.Storage.BlobDeleted"),
        event_grid(eventType="Microsoft.Storage.BlobTierChanged", data=None),
        cloud_event(type="Microsoft.Resources.ResourceWriteSuccess", subject=None),
    ],
    ids=["eg-deleted", "ce-deleted", "eg-tier-no-data", "ce-other"],
)
def test_other_event_types_are_ignored_not_refused(event: dict[str, Any]) -> None:
    [parsed] = parse_events(event)
    assert isinstance(parsed, IgnoredEvent)
    assert parsed.event_type == (event.get("eventType") or event["type"])
    assert parsed.event_id == event["id"]


def test_a_data_lake_create_file_event_waits_for_its_flush() -> None:
    [parsed] = parse_events(with_data(event_grid, api="CreateFile", contentLength=0))
    assert isinstance(parsed, IgnoredEvent)
    assert "CreateFile" in parsed.reason
    assert isinstance(parse_event(with_data(event_grid, api="FlushWithClose")), BlobCreated)


# --- malformed -----------------------------------------------------------------------------

MALFORMED: list[tuple[str, Any, str]] = [
    ("eg-no-id", lambda: without(event_grid(), "id"), "id is missing"),
    ("eg-empty-id", lambda: event_grid(id=""), "id is not a non-empty string"),
    ("eg-type-not-string", lambda: event_grid(eventType=5), "eventType is not"),
    ("eg-no-subject", lambda: without(event_grid(), "subject"), "subject is missing"),
    ("eg-bad-subject", lambda: event_grid(subject="/containers/x/y"), "is not /blobServices"),
    (
        "eg-bad-container",
        lambda: event_grid(subject="/blobServices/default/containers/Data_Sets/blobs/x.csv"),
        "unusable blob",
    ),
    (
        "eg-dotdot",
        lambda: event_grid(subject="/blobServices/default/containers/datasets/blobs/a/../b"),
        "unusable blob",
    ),
    ("eg-no-data", lambda: without(event_grid(), "data"), "data is missing"),
    ("eg-data-list", lambda: event_grid(data=[1]), "data is missing or not an object"),
    ("eg-no-etag", lambda: without(event_grid(), "data", "eTag"), "data.eTag is missing"),
    ("eg-no-length", lambda: without(event_grid(), "data", "contentLength"), "contentLength"),
    ("eg-negative", lambda: with_data(event_grid, contentLength=-1), "contentLength"),
    ("eg-length-str", lambda: with_data(event_grid, contentLength="12"), "contentLength"),
    ("eg-length-bool", lambda: with_data(event_grid, contentLength=True), "contentLength"),
    ("eg-no-time", lambda: without(event_grid(), "eventTime"), "eventTime is missing"),
    ("eg-bad-time", lambda: event_grid(eventTime="yesterday"), "not an ISO 8601"),
    ("eg-naive-time", lambda: event_grid(eventTime="2025-03-01T12:00:00"), "no time zone"),
    ("ce-version", lambda: cloud_event(specversion="0.3"), "specversion '0.3'"),
    ("ce-no-source", lambda: without(cloud_event(), "source"), "source is missing"),
    ("ce-no-type", lambda: without(cloud_event(), "type"), "type is missing"),
    ("ce-no-subject", lambda: without(cloud_event(), "subject"), "subject is missing"),
    ("ce-no-time", lambda: without(cloud_event(), "time"), "time is missing"),
    (
        "ce-base64",
        lambda: {**without(cloud_event(), "data"), "data_base64": "e30="},
        "data_base64",
    ),
    ("neither", lambda: {"id": "x", "subject": SUBJECT}, "neither an Event Grid event"),
    (
        "validation-no-code",
        lambda: event_grid(eventType="Microsoft.EventGrid.SubscriptionValidationEvent", data={}),
        "data.validationCode is missing",
    ),
]


@pytest.mark.parametrize(
    ("make", "reason"), [(m, r) for _, m, r in MALFORMED], ids=[i for i, _, _ in MALFORMED]
)
def test_each_malformed_event_is_refused_with_its_reason(make: Any, reason: str) -> None:
    with pytest.raises(MalformedEventError) as caught:
        parse_events([event_grid(id="fine"), make()])
    assert reason in str(caught.value)
    assert caught.value.index == 1
    assert str(caught.value).startswith("event [1]")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "body is not JSON"),
        (b"\xff\xfe\x00", "body is not JSON"),
        (b"[]", "empty array"),
        (b'"text"', "got a string"),
        (b"42", "got a number"),
        (b"null", "got null"),
        (b"[1]", "expected a JSON object, got a number"),
    ],
)
def test_bodies_that_hold_no_events_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedEventError, match=reason):
        decode_events(body)


# --- the local stand-in for Event Grid -----------------------------------------------------


def test_local_events_are_event_grid_events_with_deterministic_ids() -> None:
    modified = datetime(2025, 3, 1, 12, 0, 1, 500000, tzinfo=UTC)
    props = BlobProperties("datasets/x/2025/a.csv", "abc123", 42, modified)

    message = blob_event_message(props)
    [parsed] = decode_events(message.body)

    assert parsed == BlobCreated(
        event_id=blob_event_id("datasets/x/2025/a.csv", "abc123"),
        container="datasets",
        blob_name="datasets/x/2025/a.csv",
        etag="abc123",
        size=42,
        event_time=modified,
        source="/retrainer/local-blob-store",
    )
    assert message.message_id == parsed.event_id == blob_created_event(props)["id"]
    assert blob_event_id("datasets/x/2025/a.csv", "other") != parsed.event_id
