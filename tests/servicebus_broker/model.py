"""Service Bus semantics in memory: topics, subscriptions, peek-locks, dead-lettering.

No I/O here: the AMQP side (``server.py``) calls these methods from its single reactor thread,
so nothing needs a lock. Times are POSIX seconds from the caller, which keeps this testable.

Delivery counts follow the wire: the AMQP header's delivery-count is the number of earlier
failed deliveries (0 on the first), which Service Bus SDKs present as 1. A delivery fails when
it is abandoned or its lock expires; one released by the client (it arrived when nobody was
receiving) does not count, as on Service Bus.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.topology import SubscriptionSpec, Topology
from tests.servicebus_broker.codec import StoredSections

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"


class LockLostError(Exception):
    """The lock token is unknown, was settled already, or its lock expired."""


@dataclass(eq=False)
class Message:
    topic: str
    sequence_number: int
    enqueued_time: float
    sections: StoredSections


@dataclass(eq=False)
class Copy:
    """A subscription's own copy of a message, in its active or dead-letter queue."""

    message: Message
    visible_at: float
    delivery_count: int = 0
    lock: Lock | None = None
    dead_letter_reason: str | None = None
    dead_letter_error_description: str | None = None

    @property
    def sequence_number(self) -> int:
        return self.message.sequence_number


@dataclass(eq=False)
class Lock:
    token: uuid.UUID
    copy: Copy
    queue: Queue
    locked_until: float


@dataclass(eq=False)
class Queue:
    """A subscription's active queue or its dead-letter queue, ordered by sequence number."""

    subscription: Subscription
    dead_letter: bool
    copies: list[Copy] = field(default_factory=list)

    @property
    def path(self) -> str:
        suffix = "/$DeadLetterQueue" if self.dead_letter else ""
        return f"{self.subscription.path}{suffix}"

    def add(self, copy: Copy) -> None:
        keys = [c.sequence_number for c in self.copies]
        self.copies.insert(bisect.bisect(keys, copy.sequence_number), copy)

    def available(self, now: float) -> Iterator[Copy]:
        return (c for c in self.copies if c.lock is None and c.visible_at <= now)


@dataclass(eq=False)
class Subscription:
    topic: str
    spec: SubscriptionSpec
    active: Queue = field(init=False)
    dead_letter: Queue = field(init=False)

    def __post_init__(self) -> None:
        self.active = Queue(self, dead_letter=False)
        self.dead_letter = Queue(self, dead_letter=True)

    @property
    def path(self) -> str:
        return f"{self.topic}/Subscriptions/{self.spec.name}"


@dataclass(eq=False)
class Topic:
    name: str
    subscriptions: dict[str, Subscription]
    accepted_message_ids: dict[Any, float] = field(default_factory=dict)
    last_sequence_number: int = 0


class Namespace:
    def __init__(self, topology: Topology, *, duplicate_detection_window_s: float) -> None:
        self.duplicate_detection_window_s = duplicate_detection_window_s
        self.topics = {
            name: Topic(name, {spec.name: Subscription(name, spec) for spec in specs})
            for name, specs in topology.items()
        }
        self.locks: dict[uuid.UUID, Lock] = {}

    def queues(self) -> Iterator[Queue]:
        for topic in self.topics.values():
            for subscription in topic.subscriptions.values():
                yield subscription.active
                yield subscription.dead_letter

    # -- sending ---------------------------------------------------------------------------

    def publish(self, topic_name: str, messages: Iterable[StoredSections], now: float) -> None:
        """Accept messages on a topic: a copy for each subscription, duplicates dropped."""
        topic = self.topics[topic_name]
        window_start = now - self.duplicate_detection_window_s
        for message_id, accepted_at in list(topic.accepted_message_ids.items()):
            if accepted_at <= window_start:
                del topic.accepted_message_ids[message_id]
        for sections in messages:
            if sections.message_id is not None:
                if sections.message_id in topic.accepted_message_ids:
                    continue
                topic.accepted_message_ids[sections.message_id] = now
            scheduled_ms = sections.message_annotations.get("x-opt-scheduled-enqueue-time")
            # A scheduled message counts as enqueued when it becomes visible, as on Service Bus.
            visible_at = max(now, int(scheduled_ms) / 1000) if scheduled_ms else now
            topic.last_sequence_number += 1
            message = Message(topic.name, topic.last_sequence_number, visible_at, sections)
            for subscription in topic.subscriptions.values():
                subscription.active.add(Copy(message, visible_at))

    # -- receiving -------------------------------------------------------------------------

    def lock_next(self, queue: Queue, now: float) -> Lock | None:
        copy = next(queue.available(now), None)
        if copy is None:
            return None
        lock = Lock(uuid.uuid4(), copy, queue, now + queue.subscription.spec.lock_duration_s)
        copy.lock = lock
        self.locks[lock.token] = lock
        return lock

    def held_lock(self, token: uuid.UUID, now: float) -> Lock:
        lock = self.locks.get(token)
        if lock is None or lock.locked_until <= now:
            raise LockLostError(f"the lock {token} expired or its message was already settled")
        return lock

    # -- settling --------------------------------------------------------------------------

    def complete(self, lock: Lock, now: float) -> None:
        self._require(lock, now)
        self._unlock(lock)
        lock.queue.copies.remove(lock.copy)

    def abandon(self, lock: Lock, now: float) -> None:
        self._require(lock, now)
        self._unlock(lock)
        self._count_failed_delivery(lock.copy, lock.queue, now)

    def release(self, lock: Lock, now: float) -> None:
        """The client gave the message back unseen: no delivery is counted."""
        if self.locks.get(lock.token) is lock and lock.locked_until > now:
            self._unlock(lock)

    def dead_letter(
        self, lock: Lock, now: float, *, reason: str | None, error_description: str | None
    ) -> None:
        self._require(lock, now)
        self._unlock(lock)
        self._move_to_dead_letter(lock.copy, lock.queue, now, reason, error_description)

    def renew(self, lock: Lock, now: float) -> float:
        self._require(lock, now)
        lock.locked_until = now + lock.queue.subscription.spec.lock_duration_s
        return lock.locked_until

    def expire_locks(self, now: float) -> None:
        for lock in [lock for lock in self.locks.values() if lock.locked_until <= now]:
            self._unlock(lock)
            self._count_failed_delivery(lock.copy, lock.queue, now)

    def _require(self, lock: Lock, now: float) -> None:
        if self.locks.get(lock.token) is not lock or lock.locked_until <= now:
            raise LockLostError(f"the lock {lock.token} expired or its message was already settled")

    def _unlock(self, lock: Lock) -> None:
        del self.locks[lock.token]
        lock.copy.lock = None

    def _count_failed_delivery(self, copy: Copy, queue: Queue, now: float) -> None:
        copy.delivery_count += 1
        copy.visible_at = now
        max_delivery_count = queue.subscription.spec.max_delivery_count
        # The dead-letter queue itself never dead-letters.
        if not queue.dead_letter and copy.delivery_count >= max_delivery_count:
            self._move_to_dead_letter(
                copy,
                queue,
                now,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {max_delivery_count} delivery attempts.",
            )

    @staticmethod
    def _move_to_dead_letter(
        copy: Copy, queue: Queue, now: float, reason: str | None, error_description: str | None
    ) -> None:
        if queue.dead_letter:  # dead-lettering from the dead-letter queue leaves it there
            return
        queue.copies.remove(copy)
        copy.dead_letter_reason = reason
        copy.dead_letter_error_description = error_description
        copy.visible_at = now
        queue.subscription.dead_letter.add(copy)
