"""The message-bus port: topics, subscriptions, peek-lock settlement.

Shaped after Azure Service Bus so the production adapter is a thin translation: a message is
received under a lock, then completed, abandoned (redelivered, delivery count + 1) or
dead-lettered with a reason. A subscription dead-letters a message itself once its delivery
count reaches the subscription's max delivery count. A topic drops a message whose
``message_id`` it has already accepted within its duplicate-detection window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

PropertyValue = str | int | float | bool


@dataclass(frozen=True)
class OutgoingMessage:
    body: bytes
    message_id: str
    correlation_id: str | None = None
    subject: str | None = None
    application_properties: Mapping[str, PropertyValue] = field(default_factory=dict)
    scheduled_enqueue_time: datetime | None = None


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    subscription: str
    body: bytes
    message_id: str
    correlation_id: str | None
    subject: str | None
    application_properties: Mapping[str, PropertyValue]
    delivery_count: int
    sequence_number: int
    enqueued_time: datetime
    lock_token: str
    locked_until: datetime
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None


class MessageBus(Protocol):
    def send_messages(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        """Publish to every subscription of ``topic``; duplicates (by message_id) are dropped."""

    def receive_messages(
        self,
        topic: str,
        subscription: str,
        *,
        max_message_count: int = 1,
        max_wait_time: float = 5.0,
        dead_letter: bool = False,
    ) -> list[ReceivedMessage]:
        """Lock and return up to ``max_message_count`` messages, waiting at most
        ``max_wait_time`` seconds for the first. ``dead_letter=True`` reads the
        subscription's dead-letter queue instead."""

    def complete_message(self, message: ReceivedMessage) -> None:
        """Remove the message for good. Raises MessageLockLostError if the lock expired."""

    def abandon_message(self, message: ReceivedMessage) -> None:
        """Release the lock so the message is delivered again."""

    def dead_letter_message(
        self, message: ReceivedMessage, *, reason: str, error_description: str = ""
    ) -> None:
        """Move the message to the subscription's dead-letter queue with a reason."""

    def renew_message_lock(self, message: ReceivedMessage) -> datetime:
        """Extend the lock by the subscription's lock duration; returns the new expiry."""

    def interrupt_receives(self) -> None:
        """Make every receive of this bus object, waiting now or started later, return at once
        with nothing, until ``resume_receives``: a stopping service's receivers then wait no
        longer. A bus whose waits cannot be cut short (Service Bus: a remote long poll) ignores
        it, and its receives end by their ``max_wait_time``."""

    def resume_receives(self) -> None:
        """Undo ``interrupt_receives``."""

    def close(self) -> None: ...
