"""The AMQP side of the test broker: proton event handlers and the thread that runs them.

Every proton object is touched only from the reactor thread. Other threads talk to the broker
through ``ServiceBusTestBroker.stop()`` alone (a flag the reactor's 50 ms tick notices).

Links are routed by the address the client attaches them to:

- ``$cbs``: put-token requests; every token is accepted (status 202) unless its audience is
  an entity that does not exist (status 404, as Service Bus answers).
- ``<entity>/$management``: renew-lock and update-disposition; any other operation gets a
  501 reply (the SDK waits 60 s for a reply that never comes).
- ``amqps://host/<topic>`` (client sends): publishing, single messages and batches.
- ``amqps://host/<topic>/Subscriptions/<sub>`` and ``.../$DeadLetterQueue`` (client receives):
  peek-lock deliveries, one per unit of credit the client grants.
- anything else: the attach is answered, then detached with ``amqp:not-found``.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from proton import (
    UNDESCRIBED,
    Array,
    Condition,
    Connection,
    Data,
    Delivery,
    Event,
    Handler,
    Link,
    Message,
    symbol,
    timestamp,
)
from proton.reactor import Container

from shared.topology import Topology
from tests.servicebus_broker import codec
from tests.servicebus_broker.model import Lock, LockLostError, Namespace, Queue, Topic

log = logging.getLogger(__name__)


class _PeerHungUp(logging.Filter):
    """The SDK drops its socket right after sending Close, without waiting for the reply, so
    proton reports every closing connection as an error: noise in a failing test's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Couldn't send: BrokenPipeError" not in record.getMessage()


logging.getLogger("proton").addFilter(_PeerHungUp())

LOCK_LOST = "com.microsoft:message-lock-lost"
DEAD_LETTER = "com.microsoft:dead-letter"
NOT_FOUND = "amqp:not-found"
NOT_ALLOWED = "amqp:not-allowed"
NOT_IMPLEMENTED = "amqp:not-implemented"
DECODE_ERROR = "amqp:decode-error"

RENEW_LOCK = "com.microsoft:renew-lock"
UPDATE_DISPOSITION = "com.microsoft:update-disposition"

TICK_S = 0.05  # how often lock expiry and scheduled messages are looked at
PUBLISH_CREDIT = 100
MAX_MESSAGE_SIZE = 256 * 1024  # the Standard tier's limit
STOP_GRACE_S = 1.0  # how long closing connections may take before the reactor is stopped


# -- link routes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cbs:
    """Client -> broker: put-token requests."""


@dataclass(frozen=True)
class _Management:
    """Client -> broker: requests to an entity's ``$management`` node."""

    entity: Topic | Queue


@dataclass(frozen=True)
class _Replies:
    """Broker -> client: responses of ``$cbs`` or a ``$management`` node."""

    address: str


@dataclass(frozen=True)
class _Publish:
    topic: Topic


@dataclass(frozen=True)
class _Consume:
    queue: Queue


_Route = _Cbs | _Management | _Replies | _Publish | _Consume


class _Refused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition = condition
        self.description = description


_H = TypeVar("_H", bound="_BrokerHandler")
_T = TypeVar("_T")


def _guarded(method: Callable[[_H, Event], None]) -> Callable[[_H, Event], None]:
    """Log what an event handler raises instead of letting it out: an exception escaping a
    proton handler ends the reactor thread silently, and every client then hangs."""

    @functools.wraps(method)
    def guarded(self: _H, event: Event) -> None:
        try:
            method(self, event)
        except Exception as exc:
            log.exception("test broker: %s failed", method.__name__)
            self.errors.append(exc)

    return guarded


def _of(value: _T | None) -> _T:
    """proton types every event attribute as optional; each handler here reads only those
    its event carries."""
    assert value is not None
    return value


class _BrokerHandler(Handler):
    def __init__(self, namespace: Namespace, stopping: threading.Event) -> None:
        super().__init__()
        self.namespace = namespace
        self.errors: list[BaseException] = []
        self.ready = threading.Event()
        self._stopping = stopping
        self._stop_deadline: float | None = None
        self.acceptor: Any = None
        self._routes: dict[Link, _Route] = {}
        self._consumers: dict[Queue, list[Link]] = {queue: [] for queue in namespace.queues()}
        self._deliveries: dict[Delivery, Lock] = {}  # unsettled peek-lock deliveries
        self._connections: set[Connection] = set()

    # -- lifecycle -------------------------------------------------------------------------

    @_guarded
    def on_reactor_init(self, event: Event) -> None:
        _of(event.container).schedule(TICK_S, self)
        self.ready.set()

    @_guarded
    def on_timer_task(self, event: Event) -> None:
        if self._stopping.is_set():
            if self._stop_deadline is None:
                self._stop_deadline = time.monotonic() + STOP_GRACE_S
                self.acceptor.close()
                for connection in list(self._connections):
                    connection.close()
            if not self._connections or time.monotonic() > self._stop_deadline:
                _of(event.container).stop()
                return
        now = time.time()
        self.namespace.expire_locks(now)
        for queue in self._consumers:
            self._dispatch(queue)
        _of(event.container).schedule(TICK_S, self)

    @_guarded
    def on_connection_remote_open(self, event: Event) -> None:
        connection = _of(event.connection)
        self._connections.add(connection)
        connection.open()

    @_guarded
    def on_session_remote_open(self, event: Event) -> None:
        _of(event.session).open()

    @_guarded
    def on_session_remote_close(self, event: Event) -> None:
        _of(event.session).close()

    @_guarded
    def on_connection_remote_close(self, event: Event) -> None:
        connection = _of(event.connection)
        self._forget_connection(connection)
        connection.close()

    @_guarded
    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._forget_connection(event.connection)

    def _forget_connection(self, connection: Connection) -> None:
        self._connections.discard(connection)
        for link in [link for link in self._routes if link.connection == connection]:
            self._forget_link(link)

    # -- links -----------------------------------------------------------------------------

    @_guarded
    def on_link_remote_open(self, event: Event) -> None:
        link = _of(event.link)
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        try:
            route = self._route(link)
        except _Refused as refused:
            # As Service Bus does: answer the attach, then detach with the error.
            link.open()
            link.condition = Condition(refused.condition, refused.description)
            link.close()
            return
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        if isinstance(route, _Publish):
            link.max_message_size = MAX_MESSAGE_SIZE
        link.open()
        self._routes[link] = route
        if link.is_receiver:
            link.flow(PUBLISH_CREDIT)
        if isinstance(route, _Consume):
            self._consumers[route.queue].append(link)

    @_guarded
    def on_link_remote_close(self, event: Event) -> None:
        link = _of(event.link)
        self._forget_link(link)
        link.close()

    @_guarded
    def on_link_flow(self, event: Event) -> None:
        route = self._routes.get(_of(event.link))
        if isinstance(route, _Consume):
            self._dispatch(route.queue)

    def _route(self, link: Link) -> _Route:
        if link.is_receiver:  # the client sends on it
            address = link.remote_target.address or ""
            if address == "$cbs":
                return _Cbs()
            management, entity = self._resolve(address)
            if management:
                return _Management(entity)
            if isinstance(entity, Topic):
                return _Publish(entity)
            raise _Refused(NOT_ALLOWED, f"cannot send to {address!r}: not a topic")
        address = link.remote_source.address or ""
        if address == "$cbs":
            return _Replies(address)
        management, entity = self._resolve(address)
        if management:
            return _Replies(address)
        if isinstance(entity, Queue):
            return _Consume(entity)
        raise _Refused(NOT_ALLOWED, f"cannot receive from {address!r}: not a subscription")

    def _resolve(self, address: str) -> tuple[bool, Topic | Queue]:
        """``(is a $management node, entity)`` for an address like
        ``amqps://host:port/topic/Subscriptions/sub/$DeadLetterQueue``."""
        path = address.split("://", 1)[1].partition("/")[2] if "://" in address else address
        parts = path.strip("/").split("/")
        management = parts[-1].lower() == "$management"
        if management:
            parts = parts[:-1]
        not_found = _Refused(NOT_FOUND, f"The messaging entity '{path}' could not be found.")
        topic = self.namespace.topics.get(parts[0])
        if topic is None:
            raise not_found
        if len(parts) == 1:
            return management, topic
        if len(parts) not in (3, 4) or parts[1].lower() != "subscriptions":
            raise not_found
        subscription = topic.subscriptions.get(parts[2])
        if subscription is None:
            raise not_found
        if len(parts) == 3:
            return management, subscription.active
        if parts[3].lower() == "$deadletterqueue":
            return management, subscription.dead_letter
        raise not_found

    def _forget_link(self, link: Link) -> None:
        route = self._routes.pop(link, None)
        if isinstance(route, _Consume):
            self._consumers[route.queue].remove(link)
            # Locks outlive their link, as on Service Bus: they expire or are settled via
            # $management. Only the broker's bookkeeping of the deliveries goes.
            for delivery in [d for d in self._deliveries if d.link == link]:
                del self._deliveries[delivery]

    # -- deliveries ------------------------------------------------------------------------

    @_guarded
    def on_delivery(self, event: Event) -> None:
        delivery = _of(event.delivery)
        link = delivery.link
        route = self._routes.get(link)
        if isinstance(route, _Consume):
            self._settle_locked(delivery)
        elif isinstance(route, _Replies):
            delivery.settle()  # replies go out pre-settled; nothing to do
        elif delivery.readable and not delivery.partial:
            payload = bytes(_of(link.recv(delivery.pending)))
            link.advance()
            self._replenish(link)
            if delivery.aborted:
                delivery.settle()
            elif isinstance(route, _Publish):
                self._publish(delivery, route.topic, payload)
            elif isinstance(route, _Cbs):
                self._put_token(delivery, payload)
            elif isinstance(route, _Management):
                self._manage(delivery, route.entity, payload)

    @staticmethod
    def _replenish(link: Link) -> None:
        if link.credit < PUBLISH_CREDIT // 2:
            link.flow(PUBLISH_CREDIT - link.credit)

    @staticmethod
    def _settle(delivery: Delivery, state: int, condition: Condition | None = None) -> None:
        local: Any = delivery.local  # proton types the condition as never None
        local.condition = condition
        delivery.update(state)
        delivery.settle()

    def _publish(self, delivery: Delivery, topic: Topic, payload: bytes) -> None:
        try:
            messages = codec.parse_transfer(payload)
        except codec.DecodeError as exc:
            self._settle(delivery, Delivery.REJECTED, Condition(DECODE_ERROR, str(exc)))
            return
        self.namespace.publish(topic.name, messages, time.time())
        self._settle(delivery, Delivery.ACCEPTED)
        for subscription in topic.subscriptions.values():
            self._dispatch(subscription.active)

    def _dispatch(self, queue: Queue) -> None:
        """Lock available messages to the queue's consumers, one per unit of credit, taking
        turns between competing links."""
        links = self._consumers[queue]
        now = time.time()
        while True:
            link = next((link for link in links if link.credit > 0), None)
            if link is None:
                break
            lock = self.namespace.lock_next(queue, now)
            if lock is None:
                break
            self._send_locked(link, lock)
            links.remove(link)
            links.append(link)
        for link in links:
            if link.drain_mode and link.credit > 0:
                link.drained()

    def _send_locked(self, link: Link, lock: Lock) -> None:
        copy = lock.copy
        extra_properties = {}
        if lock.queue.dead_letter:
            for key, value in (
                ("DeadLetterReason", copy.dead_letter_reason),
                ("DeadLetterErrorDescription", copy.dead_letter_error_description),
            ):
                if value is not None:
                    extra_properties[key] = value
        payload = codec.encode_delivery(
            copy.message.sections,
            delivery_count=copy.delivery_count,
            annotations={
                "x-opt-sequence-number": copy.sequence_number,
                "x-opt-enqueued-time": _timestamp(copy.message.enqueued_time),
                "x-opt-locked-until": _timestamp(lock.locked_until),
            },
            extra_application_properties=extra_properties,
        )
        # The delivery tag is the lock token, as the SDK reads it: uuid.UUID(bytes_le=tag).
        delivery = link.delivery(lock.token.bytes_le)  # type: ignore[arg-type]  # bytes work
        link.stream(payload)
        link.advance()
        if link.snd_settle_mode == Link.SND_SETTLED:  # receive-and-delete
            delivery.settle()
            self.namespace.complete(lock, time.time())
        else:
            self._deliveries[delivery] = lock

    def _settle_locked(self, delivery: Delivery) -> None:
        """A client's disposition of a peek-locked delivery: apply it, then settle with the
        same outcome (the SDK waits for that echo) or with a lock-lost rejection."""
        lock = self._deliveries.get(delivery)
        state = delivery.remote_state
        if lock is None:
            delivery.settle()
            return
        if state not in (
            Delivery.ACCEPTED,
            Delivery.RELEASED,
            Delivery.MODIFIED,
            Delivery.REJECTED,
        ):
            return  # not an outcome yet
        del self._deliveries[delivery]
        now = time.time()
        try:
            if state == Delivery.ACCEPTED:
                self.namespace.complete(lock, now)
            elif state == Delivery.RELEASED:
                self.namespace.release(lock, now)
            elif state == Delivery.MODIFIED:
                if delivery.remote.undeliverable:
                    raise _Refused(NOT_IMPLEMENTED, "deferring messages is not supported")
                self.namespace.abandon(lock, now)
            else:
                reason, description = _dead_letter_details(delivery.remote.condition)
                self.namespace.dead_letter(lock, now, reason=reason, error_description=description)
        except LockLostError as exc:
            self._settle(delivery, Delivery.REJECTED, Condition(LOCK_LOST, str(exc)))
            return
        except _Refused as refused:  # the lock stays until it expires
            condition = Condition(refused.condition, refused.description)
            self._settle(delivery, Delivery.REJECTED, condition)
            return
        if delivery.settled:  # the client settled first (a release): no echo wanted
            delivery.settle()
        else:
            delivery.local.failed = delivery.remote.failed
            delivery.local.undeliverable = delivery.remote.undeliverable
            self._settle(delivery, state)
        subscription = lock.queue.subscription
        self._dispatch(subscription.active)
        self._dispatch(subscription.dead_letter)

    # -- $cbs and $management --------------------------------------------------------------

    def _put_token(self, delivery: Delivery, payload: bytes) -> None:
        request = Message()
        request.decode(payload)
        self._settle(delivery, Delivery.ACCEPTED)
        # Any token is good (no signature is checked), but, as on Service Bus, not for an
        # entity that does not exist: that is where a client first learns of a wrong name.
        properties: dict[Any, Any] = request.properties or {}
        audience = str(properties.get("name", ""))
        try:
            self._resolve(audience)
        except _Refused as refused:
            status = {"status-code": 404, "status-description": refused.description}
        else:
            status = {"status-code": 202, "status-description": "Accepted"}
        self._reply(delivery.link.connection, "$cbs", request, status)

    def _manage(self, delivery: Delivery, entity: Topic | Queue, payload: bytes) -> None:
        request = Message()
        request.decode(payload)
        self._settle(delivery, Delivery.ACCEPTED)
        properties: dict[Any, Any] = request.properties or {}
        operation = properties.get("operation")
        body: dict[Any, Any] = request.body if isinstance(request.body, dict) else {}
        now = time.time()
        status, description, condition, value = 200, "OK", None, {}
        try:
            if operation == RENEW_LOCK and isinstance(entity, Queue):
                expirations = [
                    _timestamp(self.namespace.renew(self._lock(token, entity, now), now))
                    for token in _elements(body.get("lock-tokens"))
                ]
                descriptor: Any = UNDESCRIBED
                value = {"expirations": Array(descriptor, Data.TIMESTAMP, *expirations)}
            elif operation == UPDATE_DISPOSITION and isinstance(entity, Queue):
                for token in _elements(body.get("lock-tokens")):
                    self._update_disposition(self._lock(token, entity, now), body, now)
            else:
                raise _Refused(NOT_IMPLEMENTED, f"operation {operation!r} is not supported")
        except LockLostError as exc:
            status, description, condition = 410, str(exc), LOCK_LOST
        except _Refused as refused:
            status, description, condition = 501, refused.description, refused.condition
        reply: dict[str, Any] = {"statusCode": status, "statusDescription": description}
        if condition:
            reply["errorCondition"] = symbol(condition)
        # Every request gets an answer: the SDK waits 60 s for one otherwise.
        address = request.reply_to or f"{_entity_address(entity)}/$management"
        self._reply(delivery.link.connection, address, request, reply, value)

    def _lock(self, token: Any, queue: Queue, now: float) -> Lock:
        lock = self.namespace.held_lock(uuid.UUID(str(token)), now)
        if lock.queue is not queue:
            raise LockLostError(f"lock {token} is not held on {queue.path}")
        return lock

    def _update_disposition(self, lock: Lock, body: dict[Any, Any], now: float) -> None:
        status = body.get("disposition-status")
        if status == "completed":
            self.namespace.complete(lock, now)
        elif status == "abandoned":
            self.namespace.abandon(lock, now)
        elif status == "suspended":
            self.namespace.dead_letter(
                lock,
                now,
                reason=body.get("deadletter-reason"),
                error_description=body.get("deadletter-description"),
            )
        else:
            raise _Refused(NOT_IMPLEMENTED, f"disposition {status!r} is not supported")
        for delivery in [d for d, held in self._deliveries.items() if held is lock]:
            del self._deliveries[delivery]
            delivery.settle()
        self._dispatch(lock.queue.subscription.active)
        self._dispatch(lock.queue.subscription.dead_letter)

    def _reply(
        self,
        connection: Connection,
        address: str,
        request: Message,
        properties: dict[str, Any],
        body: Any = None,
    ) -> None:
        link = next(
            (
                link
                for link, route in self._routes.items()
                if route == _Replies(address) and link.connection == connection
            ),
            None,
        )
        if link is None:
            log.warning("test broker: no reply link for %s; response dropped", address)
            return
        reply = Message(correlation_id=request.id, properties=properties, body=body)
        link.send(reply).settle()


def _dead_letter_details(condition: Condition | None) -> tuple[str | None, str | None]:
    if condition is None or condition.name != DEAD_LETTER:
        return None, None
    info: Any = condition.info or {}
    return info.get("DeadLetterReason"), info.get("DeadLetterErrorDescription")


def _elements(value: Any) -> list[Any]:
    if isinstance(value, Array):
        return list(value.elements)
    return list(value or [])


def _entity_address(entity: Topic | Queue) -> str:
    return entity.name if isinstance(entity, Topic) else entity.path


def _timestamp(seconds: float) -> timestamp:
    return timestamp(round(seconds * 1000))


# -- the broker thread ------------------------------------------------------------------------


class ServiceBusTestBroker:
    """An AMQP 1.0 broker with Service Bus semantics for the real ``azure-servicebus`` SDK.

    ``with ServiceBusTestBroker(topology) as broker:`` listens on a free 127.0.0.1 port;
    ``broker.connection_string`` is an emulator connection string for it. ``broker.errors``
    collects exceptions raised inside the broker, so that a test can fail on them.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        duplicate_detection_window_s: float = 600.0,
        host: str = "127.0.0.1",
    ) -> None:
        self._host = host
        self._stopping = threading.Event()
        self._handler = _BrokerHandler(
            Namespace(topology, duplicate_detection_window_s=duplicate_detection_window_s),
            self._stopping,
        )
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def errors(self) -> list[BaseException]:
        return self._handler.errors

    @property
    def connection_string(self) -> str:
        return (
            f"Endpoint=sb://localhost:{self.port};SharedAccessKeyName=test;"
            "SharedAccessKey=test;UseDevelopmentEmulator=true;"
        )

    def start(self) -> ServiceBusTestBroker:
        container = Container(self._handler)
        self.port = self._listen(container)
        self._thread = threading.Thread(
            target=self._run, args=(container,), name=f"servicebus-broker-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._handler.ready.wait(10):
            raise RuntimeError("the test Service Bus broker did not start")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=TICK_S + STOP_GRACE_S + 5)
            if self._thread.is_alive():
                raise RuntimeError("the test Service Bus broker did not stop")

    def __enter__(self) -> ServiceBusTestBroker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _listen(self, container: Container) -> int:
        # proton cannot report the port it bound, so pick a free one and retry on a race.
        for _ in range(20):
            with socket.socket() as probe:
                probe.bind((self._host, 0))
                port: int = probe.getsockname()[1]
            try:
                self._handler.acceptor = container.listen(f"{self._host}:{port}")
            except OSError:
                continue
            return port
        raise RuntimeError("no free port for the test Service Bus broker")

    def _run(self, container: Container) -> None:
        try:
            container.run()
        except BaseException as exc:  # the guarded handlers make this unlikely
            log.exception("test broker: reactor stopped")
            self.errors.append(exc)
