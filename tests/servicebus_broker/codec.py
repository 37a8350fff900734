"""AMQP 1.0 message sections, split and reassembled with proton's ``Data`` codec.

The broker keeps the sections a client sent as encoded bytes and only rewrites the ones Service
Bus rewrites on delivery: the header (delivery count), the message annotations (sequence number,
enqueued time, lock expiry) and, for dead-lettered copies, the application properties (the
dead-letter reason). Everything else reaches the receiver byte for byte as it was sent.

proton's ``Message`` is not used for this: it keeps only the first data section of a body, and
its ``encode()`` leaves out a header whose fields are all defaults (so delivery-count 0 would
vanish, and the SDK would report a delivery count of ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proton import Data, Described, symbol, ulong

HEADER = 0x70
DELIVERY_ANNOTATIONS = 0x71
MESSAGE_ANNOTATIONS = 0x72
PROPERTIES = 0x73
APPLICATION_PROPERTIES = 0x74
DATA = 0x75
AMQP_SEQUENCE = 0x76
AMQP_VALUE = 0x77
FOOTER = 0x78
BODY_SECTIONS = (DATA, AMQP_SEQUENCE, AMQP_VALUE)


class DecodeError(ValueError):
    """The bytes are not a well-formed AMQP message."""


@dataclass(frozen=True)
class Section:
    code: int
    encoded: bytes
    value: Any  # the decoded value of the described section


@dataclass(frozen=True)
class StoredSections:
    """One message as accepted from a sender: the sections kept for redelivery."""

    header: list[Any] | None
    message_annotations: dict[Any, Any]
    properties: bytes  # encoded section, or b""
    application_properties: bytes  # encoded section, or b""
    body: bytes  # the encoded body sections, in order
    footer: bytes
    message_id: Any  # decoded from the properties, None when absent


def split_sections(payload: bytes) -> list[Section]:
    sections: list[Section] = []
    offset = 0
    while offset < len(payload):
        data = Data()
        try:
            consumed = data.decode(payload[offset:])
        except Exception as exc:  # proton raises DataException with a bare error code
            raise DecodeError(f"undecodable AMQP data at byte {offset}: {exc}") from exc
        data.rewind()
        data.next()
        if data.type() != Data.DESCRIBED:
            raise DecodeError(f"expected a described section at byte {offset}")
        described: Any = data.get_object()
        code = described.descriptor
        if not isinstance(code, int) or not HEADER <= code <= FOOTER:
            raise DecodeError(f"unknown section descriptor {code!r} at byte {offset}")
        value = described.value
        # proton hands out binaries as views into the Data object; copy before it goes away.
        if isinstance(value, memoryview):
            value = bytes(value)
        sections.append(Section(code, bytes(payload[offset : offset + consumed]), value))
        offset += consumed
    return sections


def parse_transfer(payload: bytes) -> list[StoredSections]:
    """The messages in one transfer: one, or several when the SDK sent a batch.

    A batch is sent with message-format 0x80013700, which proton-python does not expose; it is
    recognised by its shape instead: every body section is a data section holding a whole
    encoded message. A plain message whose binary body happens to be an encoded AMQP message
    would be mistaken for a batch; the SDK never produces one.
    """
    sections = split_sections(payload)
    inner = _batched_messages(sections)
    if inner is not None:
        return [_stored(message) for message in inner]
    return [_stored(sections)]


def _batched_messages(sections: list[Section]) -> list[list[Section]] | None:
    body = [s for s in sections if s.code in BODY_SECTIONS]
    if not body or any(s.code != DATA for s in body):
        return None
    messages = []
    for section in body:
        try:
            inner = split_sections(section.value)
        except DecodeError:
            return None
        if not any(s.code in BODY_SECTIONS for s in inner):
            return None
        messages.append(inner)
    return messages


def _stored(sections: list[Section]) -> StoredSections:
    by_code = {s.code: s for s in sections if s.code not in BODY_SECTIONS}
    body = [s for s in sections if s.code in BODY_SECTIONS]
    if not body:
        raise DecodeError("message has no body section")
    header = by_code.get(HEADER)
    annotations = by_code.get(MESSAGE_ANNOTATIONS)
    properties = by_code.get(PROPERTIES)
    application_properties = by_code.get(APPLICATION_PROPERTIES)
    footer = by_code.get(FOOTER)
    return StoredSections(
        header=list(header.value) if header and header.value else None,
        message_annotations=dict(annotations.value) if annotations and annotations.value else {},
        properties=properties.encoded if properties else b"",
        application_properties=application_properties.encoded if application_properties else b"",
        body=b"".join(s.encoded for s in body),
        footer=footer.encoded if footer else b"",
        message_id=properties.value[0] if properties and properties.value else None,
    )


def encode_delivery(
    message: StoredSections,
    *,
    delivery_count: int,
    annotations: Mapping[str, Any],
    extra_application_properties: Mapping[str, str] | None = None,
) -> bytes:
    """The message as a receiver gets it, with the broker's header and annotations."""
    header = list(message.header or [])
    header += [None] * (5 - len(header))
    durable, priority, ttl = header[0], header[1], header[2]
    parts = [
        _encode_header(
            durable=bool(durable),
            priority=priority,
            ttl=ttl,
            first_acquirer=delivery_count == 0,
            delivery_count=delivery_count,
        ),
        _encode_section(
            MESSAGE_ANNOTATIONS,
            {**message.message_annotations, **{symbol(k): v for k, v in annotations.items()}},
        ),
        message.properties,
        _application_properties(message.application_properties, extra_application_properties),
        message.body,
        message.footer,
    ]
    return b"".join(parts)


def decode_map(encoded_section: bytes) -> dict[Any, Any]:
    if not encoded_section:
        return {}
    (section,) = split_sections(encoded_section)
    return dict(section.value or {})


def _application_properties(encoded: bytes, extra: Mapping[str, str] | None) -> bytes:
    if not extra:
        return encoded
    return _encode_section(APPLICATION_PROPERTIES, {**decode_map(encoded), **extra})


def _encode_header(
    *, durable: bool, priority: Any, ttl: Any, first_acquirer: bool, delivery_count: int
) -> bytes:
    # Written field by field: every field explicit, so delivery-count 0 is on the wire.
    data = Data()
    data.put_described()
    data.enter()
    data.put_ulong(HEADER)
    data.put_list()
    data.enter()
    data.put_bool(durable)
    if priority is None:
        data.put_null()
    else:
        data.put_ubyte(int(priority))
    if ttl is None:
        data.put_null()
    else:
        data.put_uint(int(ttl))
    data.put_bool(first_acquirer)
    data.put_uint(delivery_count)
    data.exit()
    data.exit()
    return bytes(data.encode())


def _encode_section(code: int, value: Any) -> bytes:
    data = Data()
    data.put_object(Described(ulong(code), value))
    return bytes(data.encode())
