"""The Azure Service Bus adapter: the MessageBus port on the ``azure-servicebus`` SDK.

Entities are not created here. The topics and subscriptions of ``shared/topology.py`` exist in
the namespace before any service starts: made by infrastructure as code in Azure, and by
``deploy/servicebus/Config.json`` in the emulator (with duplicate detection on, and the max
delivery count and lock duration of the topology). The adapter only checks names against its
``topology``, so that an undeclared topic or subscription fails at once, as on the embedded
bus; a declared entity missing from the namespace surfaces as ``ConfigurationError`` when it is
first used.

Clients are opened on first use and then kept: one sender per topic, and per subscription (and
per dead-letter queue) a small pool of receivers. Opening costs a few round trips, so it is
not charged to ``max_wait_time``. A receive takes a receiver that no other call is using and
that holds no live locks, or opens another: the SDK's handlers are not thread-safe, and a
message can only be settled through the receiver that received it, so a receiver stays with
the thread holding its messages until they are settled or their locks lapse. Settling and
renewing hold that one receiver only for the length of the call.

A receive that times out leaves its link credit with the namespace (the SDK does not drain
it), so a message can be locked to a pooled receiver that no thread is using. It waits there
until the next receive on that receiver, or until the SDK's keep-alive (every 5 s) releases
it, uncounted; Azure does the same with this SDK.

Delivery counts: on the wire (and in this SDK's ``delivery_count``) the count is the number of
earlier failed deliveries, 0 on the first; the port, like Service Bus's own documentation and
the other SDKs, counts the current delivery too, so the adapter adds one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusSubQueue,
)
from azure.servicebus import exceptions as sb
from azure.servicebus.amqp import AmqpMessageBodyType

from shared.bus.consuming import MALFORMED_MESSAGE
from shared.bus.port import OutgoingMessage, PropertyValue, ReceivedMessage
from shared.errors import (
    BusUnavailableError,
    ConfigurationError,
    MalformedMessageError,
    MessageLockLostError,
    PermanentError,
)
from shared.limits import MAX_DEAD_LETTER_DESCRIPTION_CHARS, truncate
from shared.topology import Topology, require_subscription, require_topic

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.servicebus import ServiceBusReceiver, ServiceBusSender

log = logging.getLogger(__name__)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

# The SDK refuses a wait of 0; a receive needs a round trip to the namespace anyway.
MIN_WAIT_TIME_S = 0.05

_DEAD_LETTER_PROPERTIES = ("DeadLetterReason", "DeadLetterErrorDescription")

_RETRYABLE = (
    sb.ServiceBusConnectionError,
    sb.ServiceBusCommunicationError,
    sb.OperationTimeoutError,
    sb.ServiceBusServerBusyError,
    sb.ServiceBusQuotaExceededError,
    sb.MessagingEntityDisabledError,
)


@dataclass(eq=False)
class _Sender:
    sdk: ServiceBusSender
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(eq=False)
class _Receiver:
    sdk: ServiceBusReceiver
    lock: threading.Lock = field(default_factory=threading.Lock)
    # lock token -> lock expiry of the messages received through it and not yet settled
    locked_until: dict[str, datetime] = field(default_factory=dict)

    def holds_locks(self, now: datetime) -> bool:
        return any(until > now for until in self.locked_until.values())


@dataclass(frozen=True)
class _InFlight:
    receiver: _Receiver
    message: ServiceBusReceivedMessage


class ServiceBusMessageBus:
    """``ServiceBusMessageBus(namespace, credential, topology=...)`` authenticates with
    ``credential``, by default ``DefaultAzureCredential``; ``from_connection_string`` with a
    shared access key (or the emulator's connection string). Extra keyword arguments go to
    ``ServiceBusClient`` (``retry_total``, ``logging_enable``, ...). Nothing connects here."""

    def __init__(
        self,
        fully_qualified_namespace: str,
        credential: TokenCredential | None = None,
        *,
        topology: Topology,
        **client_options: Any,
    ) -> None:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._setup(
            ServiceBusClient(fully_qualified_namespace, credential, **client_options),
            topology,
        )

    @classmethod
    def from_connection_string(
        cls, conn_str: str, *, topology: Topology, **client_options: Any
    ) -> ServiceBusMessageBus:
        try:
            client = ServiceBusClient.from_connection_string(conn_str, **client_options)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Service Bus connection string: {exc}") from exc
        bus = cls.__new__(cls)
        bus._setup(client, topology)
        return bus

    def _setup(self, client: ServiceBusClient, topology: Topology) -> None:
        self._client = client
        self._topology = topology
        self._lock = threading.Lock()  # guards the dicts below and _closed
        self._closed = False
        self._senders: dict[str, _Sender] = {}
        self._receivers: dict[tuple[str, str, bool], list[_Receiver]] = {}
        self._in_flight: dict[str, _InFlight] = {}

    def __repr__(self) -> str:
        return f"ServiceBusMessageBus({self._client.fully_qualified_namespace!r})"

    # -- MessageBus ------------------------------------------------------------------------

    def send_messages(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        require_topic(self._topology, topic)
        outgoing = [_to_sdk(message) for message in messages]
        if not outgoing:
            return
        sender = self._sender(topic)
        with sender.lock, self._translated(f"sending to {topic!r}"):
            sender.sdk.__enter__()  # opens the link on first use; a no-op once open
            # As few batches as the namespace's message size limit allows.
            batch = sender.sdk.create_message_batch()
            for message in outgoing:
                try:
                    batch.add_message(message)
                except sb.MessageSizeExceededError:
                    if len(batch) == 0:
                        raise
                    sender.sdk.send_messages(batch)
                    batch = sender.sdk.create_message_batch()
                    batch.add_message(message)
            sender.sdk.send_messages(batch)

    def receive_messages(
        self,
        topic: str,
        subscription: str,
        *,
        max_message_count: int = 1,
        max_wait_time: float = 5.0,
        dead_letter: bool = False,
    ) -> list[ReceivedMessage]:
        require_subscription(self._topology, topic, subscription)
        if max_message_count < 1:
            raise ValueError(f"max_message_count must be at least 1, got {max_message_count}")
        receiver = self._checkout_receiver(topic, subscription, dead_letter)
        try:
            try:
                with self._translated(f"receiving from {topic}/{subscription}"):
                    received = receiver.sdk.receive_messages(
                        max_message_count=max_message_count,
                        max_wait_time=max(max_wait_time, MIN_WAIT_TIME_S),
                    )
            except Exception:
                if self._closed:  # close() interrupted the wait
                    return []
                raise
            # Recorded before the receiver is handed back, so no other call takes it meanwhile.
            with self._lock:
                for message in received:
                    token = str(message.lock_token)
                    self._in_flight[token] = _InFlight(receiver, message)
                    receiver.locked_until[token] = _required(message.locked_until_utc)
        finally:
            receiver.lock.release()
        readable = []
        for message in received:
            try:
                readable.append(_to_port(message, topic, subscription, dead_letter))
            except MalformedMessageError as exc:
                # One message nobody can read must not fail the others of its batch.
                self._put_aside(message, topic, subscription, dead_letter, exc)
        return readable

    def complete_message(self, message: ReceivedMessage) -> None:
        self._settle(message, "completing", lambda r, m: r.complete_message(m))

    def abandon_message(self, message: ReceivedMessage) -> None:
        self._settle(message, "abandoning", lambda r, m: r.abandon_message(m))

    def dead_letter_message(
        self, message: ReceivedMessage, *, reason: str, error_description: str = ""
    ) -> None:
        self._settle(
            message,
            "dead-lettering",
            lambda r, m: r.dead_letter_message(
                m, reason=reason, error_description=error_description
            ),
        )

    def renew_message_lock(self, message: ReceivedMessage) -> datetime:
        entry = self._held(message)
        with entry.receiver.lock, self._translated(_describe("renewing the lock on", message)):
            try:
                locked_until = _utc(entry.receiver.sdk.renew_message_lock(entry.message))
            except (sb.MessageLockLostError, sb.MessageNotFoundError):
                self._forget(message.lock_token)
                raise
        with self._lock:
            entry.receiver.locked_until[message.lock_token] = locked_until
        return locked_until

    def interrupt_receives(self) -> None:
        # A receive is the SDK's remote long poll, which only close() cuts short; the
        # services keep their receive waits short on Service Bus instead.
        pass

    def resume_receives(self) -> None:
        pass

    def close(self) -> None:
        """Close every sender and receiver, at once: each takes a moment to detach. A receive
        waiting meanwhile returns an empty list."""
        with self._lock:
            self._closed = True
            handlers: list[ServiceBusSender | ServiceBusReceiver] = [
                sender.sdk for sender in self._senders.values()
            ]
            handlers += [r.sdk for pool in self._receivers.values() for r in pool]
            self._senders.clear()
            self._receivers.clear()
            self._in_flight.clear()
        threads = [
            threading.Thread(target=_close_quietly, args=(handler,), daemon=True)
            for handler in handlers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _close_quietly(self._client)

    # -- handlers --------------------------------------------------------------------------

    def _sender(self, topic: str) -> _Sender:
        with self._lock:
            self._require_open()
            sender = self._senders.get(topic)
            if sender is None:
                sender = self._senders[topic] = _Sender(self._client.get_topic_sender(topic))
            return sender

    def _checkout_receiver(self, topic: str, subscription: str, dead_letter: bool) -> _Receiver:
        """An open receiver for this call alone, returned with its lock held."""
        key = (topic, subscription, dead_letter)
        now = datetime.now(UTC)
        with self._lock:
            self._require_open()
            pool = self._receivers.setdefault(key, [])
            receiver = next(
                (r for r in pool if not r.holds_locks(now) and r.lock.acquire(blocking=False)),
                None,
            )
            if receiver is None:
                receiver = _Receiver(
                    self._client.get_subscription_receiver(
                        topic,
                        subscription,
                        sub_queue=ServiceBusSubQueue.DEAD_LETTER if dead_letter else None,
                    )
                )
                receiver.lock.acquire()
                pool.append(receiver)
            for token in receiver.locked_until:  # all lapsed, never settled
                self._in_flight.pop(token, None)
            receiver.locked_until.clear()
        try:
            # Opened before the receive, so that max_wait_time is all spent waiting.
            with self._translated(f"opening a receiver for {topic}/{subscription}"):
                receiver.sdk.__enter__()  # a no-op once open
        except BaseException:
            receiver.lock.release()
            raise
        return receiver

    # -- settling --------------------------------------------------------------------------

    def _put_aside(
        self,
        message: ServiceBusReceivedMessage,
        topic: str,
        subscription: str,
        dead_letter: bool,
        problem: MalformedMessageError,
    ) -> None:
        """Dead-letter a message the port cannot represent, at once."""
        token = str(message.lock_token)
        with self._lock:
            entry = self._in_flight.get(token)
        where = f"message {message.message_id!r} in {topic}/{subscription}"
        log.warning("%s cannot be read: %s", where, problem)
        if entry is None or dead_letter:  # already dead-lettered: left to its lock's expiry
            return
        try:
            with entry.receiver.lock, self._translated(f"dead-lettering {where}"):
                entry.receiver.sdk.dead_letter_message(
                    entry.message,
                    reason=MALFORMED_MESSAGE,
                    error_description=truncate(str(problem), MAX_DEAD_LETTER_DESCRIPTION_CHARS),
                )
        except Exception as exc:  # its lock lapses; it comes back and is tried again
            log.warning("dead-lettering %s failed: %s", where, exc)
        finally:
            self._forget(token)

    def _settle(
        self,
        message: ReceivedMessage,
        verb: str,
        settle: Callable[[ServiceBusReceiver, ServiceBusReceivedMessage], None],
    ) -> None:
        entry = self._held(message)
        with entry.receiver.lock, self._translated(_describe(verb, message)):
            try:
                settle(entry.receiver.sdk, entry.message)
            except (sb.MessageLockLostError, sb.MessageAlreadySettled, sb.MessageNotFoundError):
                self._forget(message.lock_token)
                raise
        self._forget(message.lock_token)

    def _held(self, message: ReceivedMessage) -> _InFlight:
        """The receiver and SDK message behind ``message``, if its lock may still be held."""
        with self._lock:
            self._require_open()
            entry = self._in_flight.get(message.lock_token)
        locked_until = entry.message.locked_until_utc if entry else None
        if entry is None or locked_until is None or locked_until <= datetime.now(UTC):
            self._forget(message.lock_token)
            raise MessageLockLostError(
                f"{_describe('the lock on', message)} expired, the message was already "
                "settled, or another client received it"
            )
        return entry

    def _forget(self, lock_token: str) -> None:
        with self._lock:
            entry = self._in_flight.pop(lock_token, None)
            if entry is not None:
                entry.receiver.locked_until.pop(lock_token, None)

    # -- checks and errors -----------------------------------------------------------------

    def _require_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        """SDK exceptions become the project's, by what a caller can do about them."""
        try:
            yield
        except (sb.MessageLockLostError, sb.MessageAlreadySettled, sb.MessageNotFoundError) as exc:
            raise MessageLockLostError(f"{doing}: {_text(exc)}") from exc
        except (
            sb.MessagingEntityNotFoundError,
            # Service Bus refuses the token for an entity that does not exist (status 404).
            sb.ServiceBusAuthenticationError,
            sb.ServiceBusAuthorizationError,
        ) as exc:
            raise ConfigurationError(
                f"{doing} in {self._client.fully_qualified_namespace}: {_text(exc)}"
            ) from exc
        except sb.MessageSizeExceededError as exc:
            raise PermanentError(f"{doing}: {_text(exc)}") from exc
        except _RETRYABLE as exc:
            raise BusUnavailableError(f"{doing}: {_text(exc)}") from exc
        except sb.ServiceBusError as exc:
            # Mostly "handler failed" on a broken connection; the SDK reconnects next time.
            raise BusUnavailableError(f"{doing}: {_text(exc)}") from exc


# -- conversions ------------------------------------------------------------------------------


def _to_sdk(message: OutgoingMessage) -> ServiceBusMessage:
    when = message.scheduled_enqueue_time
    if when is not None and when.tzinfo is None:
        raise ValueError(f"scheduled_enqueue_time of {message.message_id!r} is naive")
    return ServiceBusMessage(
        body=message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        subject=message.subject,
        application_properties=_encodable(message.application_properties) or None,
        scheduled_enqueue_time_utc=when,
    )


def _encodable(properties: Mapping[str, PropertyValue]) -> dict[str | bytes, Any]:
    """The SDK writes every Python int as a 32-bit AMQP int and fails on larger ones; those
    go as AMQP longs, in the typed-value form of the SDK's own AMQP encoder."""
    from azure.servicebus._pyamqp.utils import amqp_long_value

    return {
        key: amqp_long_value(value)
        if isinstance(value, int)
        and not isinstance(value, bool)
        and not _INT32_MIN <= value <= _INT32_MAX
        else value
        for key, value in properties.items()
    }


def _to_port(
    message: ServiceBusReceivedMessage, topic: str, subscription: str, dead_letter: bool
) -> ReceivedMessage:
    properties = _decode_properties(message.application_properties)
    if dead_letter:  # reported in their own fields, as by the embedded bus
        for key in _DEAD_LETTER_PROPERTIES:
            properties.pop(key, None)
    return ReceivedMessage(
        topic=topic,
        subscription=subscription,
        body=_body(message, dead_letter),
        message_id="" if message.message_id is None else str(message.message_id),
        correlation_id=message.correlation_id,
        subject=message.subject,
        application_properties=properties,
        delivery_count=(message.delivery_count or 0) + 1,
        sequence_number=_required(message.sequence_number),
        enqueued_time=_utc(_required(message.enqueued_time_utc)),
        lock_token=str(message.lock_token),
        locked_until=_utc(_required(message.locked_until_utc)),
        dead_letter_reason=message.dead_letter_reason,
        dead_letter_error_description=message.dead_letter_error_description,
    )


def _body(message: ServiceBusReceivedMessage, dead_letter: bool) -> bytes:
    if message.body_type != AmqpMessageBodyType.DATA and dead_letter:
        # Read from the dead-letter queue to be looked at: shown as text rather than lost.
        return str(message.body).encode()
    if message.body_type != AmqpMessageBodyType.DATA:
        # An AMQP value or sequence body, from a client other than this adapter.
        raise MalformedMessageError(
            f"message {message.message_id!r} has a {message.body_type} body, not bytes"
        )
    body: Any = message.body
    if isinstance(body, bytes):
        return body
    try:
        return b"".join(body)  # one bytes object per data section
    except TypeError as exc:
        raise MalformedMessageError(f"message {message.message_id!r} has no bytes body") from exc


def _decode_properties(raw: Mapping[Any, Any] | None) -> dict[str, PropertyValue]:
    """The SDK returns string keys and values as bytes."""
    decoded: dict[str, PropertyValue] = {}
    for key, value in (raw or {}).items():
        name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        if isinstance(value, bytes):
            decoded[name] = value.decode(errors="replace")
        elif isinstance(value, bool | int | float | str):
            decoded[name] = value
        elif value is not None:  # uuid, timestamp...: not port types, kept readable
            decoded[name] = str(value)
    return decoded


def _required(value: Any) -> Any:
    if value is None:
        raise MalformedMessageError("the namespace sent a message without its broker properties")
    return value


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _describe(verb: str, message: ReceivedMessage) -> str:
    return (
        f"{verb} message {message.message_id!r} (sequence number {message.sequence_number}) "
        f"in {message.topic}/{message.subscription}"
    )


def _text(exc: BaseException) -> str:
    """The SDK's message, with the underlying error's when it says more."""
    inner = getattr(exc, "error", None) or exc.__cause__
    text = str(exc)
    if inner is not None and str(inner) and str(inner) not in text:
        text += f" ({inner})"
    return text


def _close_quietly(handler: Any) -> None:
    try:
        handler.close()
    except Exception:  # closing must not fail the caller; the connection is dropped anyway
        log.warning("closing %r failed", handler, exc_info=True)


__all__ = ["ServiceBusMessageBus"]
