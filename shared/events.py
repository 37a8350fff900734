"""Blob-storage events: Azure Event Grid ``Microsoft.Storage.BlobCreated`` in, typed out.

Pure: no I/O except ``BlobEventPublisher``, which sends through the message-bus port.

Both schemas Event Grid can deliver are read:

* Event Grid schema: ``{id, topic, subject, eventType, eventTime, data, dataVersion,
  metadataVersion}``; a webhook receives a JSON array of them, a Service Bus topic one per
  message.
* CloudEvents 1.0, structured mode: ``{specversion: "1.0", id, source, type, subject, time,
  data}``; one object (``application/cloudevents+json``) or an array
  (``application/cloudevents-batch+json``). Binary mode (``ce-*`` headers) is not read: Event
  Grid delivers structured mode.

Each event becomes a ``BlobCreated``, a ``SubscriptionValidation`` (the Event Grid webhook
handshake) or an ``IgnoredEvent`` (any other type, e.g. ``BlobDeleted``). An event that claims
to be one of ours but cannot be read raises ``MalformedEventError`` with the reason.

The subject of a blob event is ``/blobServices/default/containers/<container>/blobs/<path>``;
``BlobCreated.blob_name`` is ``<container>/<path>``, the name the ``BlobStore`` port uses.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.blobs.port import BlobProperties, split_blob_name
from shared.bus.port import MessageBus, OutgoingMessage
from shared.errors import InvalidBlobNameError, MalformedMessageError
from shared.limits import JsonLimits, JsonTooLargeError, check_json, truncate
from shared.topology import BLOB_EVENTS_TOPIC

log = logging.getLogger(__name__)

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
# Data Lake Storage Gen2 (hierarchical namespace) reports a new, still empty file with
# api=CreateFile and the finished one with api=FlushWithClose: only the latter has the data.
_INCOMPLETE_APIS = frozenset({"CreateFile"})

_SUBJECT = re.compile(r"^/blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<path>.+)$")
# The source/topic local events claim: not an Azure resource id, but shaped like one.
LOCAL_SOURCE = "/retrainer/local-blob-store"
# Blob (name, etag) -> event id, so the same write always yields the same event.
_EVENT_ID_NAMESPACE = uuid.UUID("1b0b5c5e-2f4e-4d8e-9a55-6a1f3c1f0b7e")
# Event Grid delivers at most 5,000 events (1 MB) per batch; a blob URL is at most ~2 KB.
EVENT_LIMITS = JsonLimits(max_depth=32, max_string_chars=8192, max_items=5000, max_values=200_000)


class MalformedEventError(MalformedMessageError):
    """An event (or a body of events) that cannot be read; ``reason`` says why."""

    def __init__(self, reason: str, *, index: int | None = None, event_id: str | None = None):
        where = ""
        if index is not None:
            where = f"event [{index}]" + (f" (id {event_id!r})" if event_id else "") + ": "
        elif event_id:
            where = f"event {event_id!r}: "
        super().__init__(where + reason)
        self.reason = reason
        self.index = index
        self.event_id = event_id


@dataclass(frozen=True)
class BlobCreated:
    event_id: str
    container: str
    # container/path, as the BlobStore port names blobs
    blob_name: str
    etag: str
    size: int
    event_time: datetime
    # Event Grid ``topic`` / CloudEvents ``source``: the storage account's resource id
    source: str


@dataclass(frozen=True)
class SubscriptionValidation:
    event_id: str
    validation_code: str
    validation_url: str | None


@dataclass(frozen=True)
class IgnoredEvent:
    event_id: str
    event_type: str
    subject: str | None
    reason: str


ParsedEvent = BlobCreated | SubscriptionValidation | IgnoredEvent


def decode_events(body: bytes | str) -> list[ParsedEvent]:
    """Parse a JSON body holding one event or an array of events (either schema); raises
    MalformedEventError, whatever is wrong with it."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, too deep, a huge int
        raise MalformedEventError(f"body is not JSON: {truncate(str(exc), 200)}") from exc
    return parse_events(payload)


def parse_events(payload: object) -> list[ParsedEvent]:
    """One event (a JSON object) or a batch (a JSON array of objects)."""
    try:
        check_json(payload, EVENT_LIMITS)
    except JsonTooLargeError as exc:
        raise MalformedEventError(str(exc)) from exc
    try:
        return _parse_events(payload)
    except MalformedEventError:
        raise
    except Exception as exc:  # a shape no check above foresaw: still the sender's fault
        raise MalformedEventError(
            f"unreadable event: {type(exc).__name__}: {truncate(str(exc), 200)}"
        ) from exc


def _parse_events(payload: object) -> list[ParsedEvent]:
    if isinstance(payload, dict):
        return [parse_event(payload)]
    if not isinstance(payload, list):
        raise MalformedEventError(
            f"expected an event object or an array of events, got {_json_type(payload)}"
        )
    if not payload:
        raise MalformedEventError("empty array: no events")
    return [parse_event(item, index=i) for i, item in enumerate(payload)]


def parse_event(event: object, *, index: int | None = None) -> ParsedEvent:
    if not isinstance(event, dict):
        raise MalformedEventError(f"expected a JSON object, got {_json_type(event)}", index=index)
    if "specversion" in event:
        return _CloudEventReader(event, index).read()
    if "eventType" in event:
        return _EventGridReader(event, index).read()
    raise MalformedEventError(
        "neither an Event Grid event (no 'eventType') nor a CloudEvent (no 'specversion')",
        index=index,
        event_id=event.get("id") if isinstance(event.get("id"), str) else None,
    )


class _Reader:
    """Field access that fails with a reason naming the field."""

    # Per schema: the names of the id, type, subject, time and source fields.
    ID, TYPE, SUBJECT, TIME, SOURCE = "id", "type", "subject", "time", "source"

    def __init__(self, event: dict[str, Any], index: int | None) -> None:
        self.event = event
        self.index = index
        raw_id = event.get(self.ID)
        self.event_id = raw_id if isinstance(raw_id, str) and raw_id else None

    def fail(self, reason: str) -> MalformedEventError:
        return MalformedEventError(reason, index=self.index, event_id=self.event_id)

    def string(self, obj: dict[str, Any], key: str, where: str = "") -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            missing = "missing" if value is None else f"not a non-empty string: {value!r}"
            raise self.fail(f"{where}{key} is {missing}")
        return value

    def read(self) -> ParsedEvent:
        self.check_envelope()
        event_id = self.string(self.event, self.ID)
        event_type = self.string(self.event, self.TYPE)
        data = self.event.get("data")
        if event_type == SUBSCRIPTION_VALIDATION:
            if not isinstance(data, dict):
                raise self.fail("data is missing or not an object")
            url = data.get("validationUrl")
            return SubscriptionValidation(
                event_id,
                self.string(data, "validationCode", "data."),
                url if isinstance(url, str) else None,
            )
        subject = self.event.get(self.SUBJECT)
        subject = subject if isinstance(subject, str) else None
        if event_type != BLOB_CREATED:
            return IgnoredEvent(event_id, event_type, subject, f"event type {event_type}")
        if not isinstance(data, dict):
            raise self.fail("data is missing or not an object")
        api = data.get("api")
        if api is not None and not isinstance(api, str):
            raise self.fail(f"data.api is not a string: {truncate(repr(api), 100)}")
        if api in _INCOMPLETE_APIS:
            return IgnoredEvent(event_id, event_type, subject, f"api {api}: the file is not final")
        if subject is None:
            raise self.fail(f"{self.SUBJECT} is missing or not a string")
        match = _SUBJECT.match(subject)
        if match is None:
            raise self.fail(
                f"{self.SUBJECT} {subject!r} is not "
                "/blobServices/default/containers/<container>/blobs/<path>"
            )
        blob_name = f"{match['container']}/{match['path']}"
        try:
            container, _ = split_blob_name(blob_name)
        except InvalidBlobNameError as exc:
            raise self.fail(f"{self.SUBJECT} names an unusable blob: {exc.reason}") from exc
        size = data.get("contentLength")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise self.fail(f"data.contentLength is not a non-negative integer: {size!r}")
        return BlobCreated(
            event_id=event_id,
            container=container,
            blob_name=blob_name,
            etag=self.string(data, "eTag", "data.").strip('"'),
            size=size,
            event_time=self.time(),
            # Required in a CloudEvent (checked above); an Event Grid publisher may leave
            # ``topic`` out, Event Grid fills it in on delivery.
            source=source if isinstance(source := self.event.get(self.SOURCE), str) else "",
        )

    def check_envelope(self) -> None:
        pass

    def time(self) -> datetime:
        raw = self.string(self.event, self.TIME)
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise self.fail(f"{self.TIME} {raw!r} is not an ISO 8601 timestamp") from None
        if parsed.tzinfo is None:
            raise self.fail(f"{self.TIME} {raw!r} has no time zone")
        return parsed.astimezone(UTC)


class _EventGridReader(_Reader):
    ID, TYPE, SUBJECT, TIME, SOURCE = "id", "eventType", "subject", "eventTime", "topic"


class _CloudEventReader(_Reader):
    def check_envelope(self) -> None:
        version = self.event.get("specversion")
        if version != "1.0":
            raise self.fail(f"specversion {version!r} is not supported (only '1.0')")
        self.string(self.event, "source")
        if "data_base64" in self.event and "data" not in self.event:
            raise self.fail("data_base64 is not supported: expected JSON data")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "a number"


# --- producing events (the local blob store's stand-in for Event Grid) -------------------


def blob_event_id(blob_name: str, etag: str) -> str:
    """The same write (name and etag) always gets the same event id."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{blob_name}\n{etag}"))


def blob_created_event(props: BlobProperties, *, source: str = LOCAL_SOURCE) -> dict[str, Any]:
    """A ``Microsoft.Storage.BlobCreated`` event in Event Grid schema for a written blob."""
    container, path = split_blob_name(props.name)
    return {
        "id": blob_event_id(props.name, props.etag),
        "topic": source,
        "subject": f"/blobServices/default/containers/{container}/blobs/{path}",
        "eventType": BLOB_CREATED,
        "eventTime": props.last_modified.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "api": "PutBlob",
            "eTag": props.etag,
            "contentType": "application/octet-stream",
            "contentLength": props.size,
            "blobType": "BlockBlob",
            "url": f"local:///{props.name}",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def blob_event_message(props: BlobProperties, *, source: str = LOCAL_SOURCE) -> OutgoingMessage:
    """The event as Event Grid puts it on a Service Bus topic: one event per message."""
    event = blob_created_event(props, source=source)
    return OutgoingMessage(
        body=json.dumps(event).encode(),
        # The event id: a re-sent event is dropped by the bus's duplicate detection.
        message_id=event["id"],
        subject=event["subject"],
        application_properties={"aeg-event-type": "Notification"},
    )


class BlobEventPublisher:
    """``LocalBlobStore(on_blob_created=...)`` hook: each write of a blob that ``wanted``
    accepts becomes a BlobCreated event on the ``blob-events`` topic.

    The bus is opened on the first event, so a process that never writes a wanted blob (a
    worker writing its outputs) never opens it."""

    def __init__(
        self,
        bus: Callable[[], MessageBus],
        *,
        wanted: Callable[[str], bool] = lambda _name: True,
        source: str = LOCAL_SOURCE,
    ) -> None:
        self._bus_factory = bus
        self._bus: MessageBus | None = None
        self._lock = threading.Lock()
        self._wanted = wanted
        self._source = source

    def __call__(self, props: BlobProperties) -> None:
        if not self._wanted(props.name):
            return
        self._get_bus().send_messages(
            BLOB_EVENTS_TOPIC, [blob_event_message(props, source=self._source)]
        )

    def close(self) -> None:
        with self._lock:
            if self._bus is not None:
                self._bus.close()
                self._bus = None

    def _get_bus(self) -> MessageBus:
        with self._lock:
            if self._bus is None:
                self._bus = self._bus_factory()
            return self._bus
