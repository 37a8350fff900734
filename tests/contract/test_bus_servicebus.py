"""The bus contract against the Service Bus adapter, driving the real ``azure-servicebus`` SDK
over AMQP against the test broker in ``tests/servicebus_broker``; plus what only this adapter
does: settings, SDK errors translated, closing under a waiting receive, batching."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._pyamqp.message import BatchMessage
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport
from azure.servicebus.amqp import AmqpAnnotatedMessage
from azure.servicebus.exceptions import OperationTimeoutError, ServiceBusError
from pydantic import SecretStr

from shared.bootstrap import create_bus
from shared.bus.port import MessageBus, ReceivedMessage
from shared.bus.servicebus import ServiceBusMessageBus
from shared.errors import ConfigurationError, MessageLockLostError
from shared.settings import CommonSettings
from shared.topology import (
    COORDINATOR_SUBSCRIPTION,
    EVENTS_TOPIC,
    SubscriptionSpec,
    Topology,
    build_topology,
)
from tests.contract.bus_contract import (
    ARCHIVE,
    AUDIT,
    BILLING,
    ORDERS,
    SHIPPING,
    BusContract,
    MakeBus,
    outgoing,
)
from tests.servicebus_broker import ServiceBusTestBroker, codec


@contextmanager
def running_broker(topology: Topology) -> Iterator[ServiceBusTestBroker]:
    with ServiceBusTestBroker(topology) as broker:
        yield broker
    # An exception inside the broker is a broker bug even when the SDK shrugged it off.
    assert broker.errors == [], f"the test broker failed: {broker.errors!r}"


@contextmanager
def buses(broker: ServiceBusTestBroker, **client_options: Any) -> Iterator[MakeBus]:
    made: list[ServiceBusMessageBus] = []

    def make(topology: Topology) -> ServiceBusMessageBus:
        made.append(
            ServiceBusMessageBus.from_connection_string(
                broker.connection_string, topology=topology, **client_options
            )
        )
        return made[-1]

    try:
        yield make
    finally:
        # Side by side: closing waits for the SDK's keep-alive threads, up to a second each.
        closing = [threading.Thread(target=bus.close) for bus in made]
        for thread in closing:
            thread.start()
        for thread in closing:
            thread.join()


class TestServiceBusMessageBus(BusContract):
    # Longer than the contract's default: a client's first receive on a subscription opens an
    # AMQP connection (about half a second in this SDK), and the renewal test's rival client
    # must still find the renewed lock held after that.
    lock_duration_s = 2.0
    # The same cost again: the scheduled message must still be hidden after a sender and a
    # receiver have each opened their connection. No longer than the lock, though: that test
    # leaves the other message locked, and its lock must not lapse before the schedule does.
    schedule_delay_s = 2.0

    # A broker per test: every test starts with empty entities, and opening one costs
    # nothing next to the SDK's own connection set-up.
    @pytest.fixture
    def make_bus(self) -> Iterator[MakeBus]:
        with running_broker(self.topology()) as broker, buses(broker) as make:
            yield make


# -- adapter specifics ---------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[ServiceBusTestBroker]:
    with running_broker(BusContract.topology()) as broker:
        yield broker


@pytest.fixture
def bus(broker: ServiceBusTestBroker) -> Iterator[MessageBus]:
    with buses(broker) as make:
        yield make(BusContract.topology())


def receive_one(bus: MessageBus, topic: str, subscription: str, **options: Any) -> ReceivedMessage:
    received = bus.receive_messages(topic, subscription, max_wait_time=5.0, **options)
    assert len(received) == 1
    return received[0]


def test_application_property_types_survive_the_wire(bus: MessageBus) -> None:
    # The SDK hands back string keys and values as bytes, and picks integer widths itself.
    properties = {
        "text": "naïve ✓",
        "empty": "",
        "small": -3,
        "large": 2**40,
        "zero": 0,
        "ratio": -0.25,
        "true": True,
        "false": False,
    }
    bus.send_messages(AUDIT, [outgoing(application_properties=properties)])

    received = receive_one(bus, AUDIT, ARCHIVE)

    assert dict(received.application_properties) == properties
    assert {k: type(v) for k, v in received.application_properties.items()} == {
        k: type(v) for k, v in properties.items()
    }


def test_dead_letter_details_are_fields_not_application_properties(bus: MessageBus) -> None:
    bus.send_messages(AUDIT, [outgoing(application_properties={"kind": "report"})])
    bus.dead_letter_message(
        receive_one(bus, AUDIT, ARCHIVE), reason="Broken", error_description="x"
    )

    dead = receive_one(bus, AUDIT, ARCHIVE, dead_letter=True)

    assert (dead.dead_letter_reason, dead.dead_letter_error_description) == ("Broken", "x")
    assert dict(dead.application_properties) == {"kind": "report"}


def test_a_message_the_port_cannot_carry_is_dead_lettered_without_its_batch(
    bus: MessageBus, broker: ServiceBusTestBroker
) -> None:
    # An AMQP value body (another client's message) is not bytes: the port cannot carry it.
    bus.send_messages(AUDIT, [outgoing(b"first", message_id="first")])
    client = ServiceBusClient.from_connection_string(broker.connection_string)
    with client, client.get_topic_sender(AUDIT) as sender:
        sender.send_messages(AmqpAnnotatedMessage(value_body={"a": 1}))
    bus.send_messages(AUDIT, [outgoing(b"second", message_id="second")])

    received: list[ReceivedMessage] = []
    deadline = time.monotonic() + 30
    while len(received) < 2 and time.monotonic() < deadline:
        received += bus.receive_messages(AUDIT, ARCHIVE, max_message_count=3, max_wait_time=2.0)
    for message in received:
        bus.complete_message(message)

    assert [m.body for m in received] == [b"first", b"second"]
    dead = receive_one(bus, AUDIT, ARCHIVE, dead_letter=True)
    assert dead.dead_letter_reason == "MalformedMessage"
    assert "body" in (dead.dead_letter_error_description or "")


def test_messages_beyond_one_batch_are_sent_in_several(bus: MessageBus) -> None:
    # The broker allows 256 KiB per message, like the Standard tier.
    bodies = [bytes([i]) * 100_000 for i in range(5)]
    bus.send_messages(AUDIT, [outgoing(body) for body in bodies])

    received: list[ReceivedMessage] = []
    while len(received) < len(bodies):
        batch = bus.receive_messages(AUDIT, ARCHIVE, max_message_count=5, max_wait_time=5.0)
        assert batch, "messages went missing"
        received += batch

    assert [m.body for m in received] == bodies


def test_a_lock_renews_while_another_thread_waits_on_the_same_subscription(
    bus: MessageBus,
) -> None:
    # A worker renews from one thread while its other threads sit in receive calls.
    bus.send_messages(ORDERS, [outgoing()])
    message = receive_one(bus, ORDERS, BILLING)
    waiting = threading.Thread(
        target=bus.receive_messages, args=(ORDERS, BILLING), kwargs={"max_wait_time": 5.0}
    )
    waiting.start()
    time.sleep(0.5)  # the waiting receive is under way

    renewed_until = bus.renew_message_lock(message)

    assert waiting.is_alive(), "the renewal waited for the other receive to finish"
    assert renewed_until > message.locked_until
    bus.complete_message(message)
    bus.send_messages(ORDERS, [outgoing()])  # ends the wait
    waiting.join()


def test_settling_a_message_this_client_did_not_receive_loses_the_lock(
    broker: ServiceBusTestBroker,
) -> None:
    with buses(broker) as make:
        receiver, other = make(BusContract.topology()), make(BusContract.topology())
        receiver.send_messages(ORDERS, [outgoing()])
        message = receive_one(receiver, ORDERS, BILLING)

        with pytest.raises(MessageLockLostError, match="another client"):
            other.complete_message(message)
        receiver.complete_message(message)


def test_close_ends_a_waiting_receive_with_nothing(broker: ServiceBusTestBroker) -> None:
    bus = ServiceBusMessageBus.from_connection_string(
        broker.connection_string, topology=BusContract.topology()
    )
    bus.receive_messages(ORDERS, SHIPPING, max_wait_time=0.1)  # the receiver is open
    results: list[object] = []

    def receive() -> None:
        try:
            results.append(bus.receive_messages(ORDERS, SHIPPING, max_wait_time=60))
        except BaseException as exc:
            results.append(exc)

    waiting = threading.Thread(target=receive)
    waiting.start()
    time.sleep(0.5)

    bus.close()
    waiting.join(timeout=30)

    assert not waiting.is_alive(), "the receive kept waiting after close()"
    assert results == [[]]
    with pytest.raises(RuntimeError, match="closed"):
        bus.send_messages(ORDERS, [outgoing()])


def test_an_entity_missing_from_the_namespace_is_a_configuration_error(
    broker: ServiceBusTestBroker,
) -> None:
    # Declared in the topology (so the local check passes) but never created in Azure.
    topology = {**BusContract.topology(), "ghost": (SubscriptionSpec("phantom"),)}
    with buses(broker, retry_total=0) as make:
        bus = make(topology)

        with pytest.raises(ConfigurationError, match="ghost"):
            bus.send_messages("ghost", [outgoing()])
        with pytest.raises(ConfigurationError, match="ghost"):
            bus.receive_messages("ghost", "phantom", max_wait_time=0.1)


def test_a_malformed_connection_string_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="connection string"):
        ServiceBusMessageBus.from_connection_string(
            "Endpoint=nonsense", topology=BusContract.topology()
        )


def test_scheduled_times_must_carry_a_time_zone(bus: MessageBus) -> None:
    naive = datetime.now() + timedelta(seconds=1)  # naive on purpose

    with pytest.raises(ValueError, match="naive"):
        bus.send_messages(ORDERS, [outgoing(scheduled_enqueue_time=naive)])


# -- settings ------------------------------------------------------------------------------------


def test_settings_with_a_connection_string_make_a_servicebus_bus() -> None:
    with running_broker(build_topology()) as services_broker:
        settings = CommonSettings(
            bus="servicebus",
            servicebus_connection_string=SecretStr(services_broker.connection_string),
        )

        bus = create_bus(settings)
        try:
            assert isinstance(bus, ServiceBusMessageBus)
            # It reaches the broker, with the services' topology.
            sent = outgoing()
            bus.send_messages(EVENTS_TOPIC, [sent])
            received = receive_one(bus, EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION)
            assert received.message_id == sent.message_id
            with pytest.raises(ConfigurationError):
                bus.send_messages(ORDERS, [outgoing()])
        finally:
            bus.close()


def test_settings_with_a_namespace_use_the_default_azure_credential() -> None:
    settings = CommonSettings(
        bus="servicebus", servicebus_namespace="example.servicebus.windows.net"
    )

    bus = create_bus(settings)  # connects to nothing until used

    assert isinstance(bus, ServiceBusMessageBus)
    assert "example.servicebus.windows.net" in repr(bus)
    bus.close()


def test_settings_without_a_connection_string_or_namespace_are_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="RETRAINER_SERVICEBUS_CONNECTION_STRING"):
        create_bus(CommonSettings(bus="servicebus"))


def test_settings_read_the_servicebus_choice_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RETRAINER_BUS", "servicebus")
    monkeypatch.setenv("RETRAINER_SERVICEBUS_NAMESPACE", "ns.servicebus.windows.net")

    settings = CommonSettings()

    assert (settings.bus, settings.servicebus_namespace) == (
        "servicebus",
        "ns.servicebus.windows.net",
    )
    assert settings.servicebus_connection_string is None


# -- the test broker itself ----------------------------------------------------------------------


def test_the_broker_puts_a_first_delivery_count_of_zero_on_the_wire() -> None:
    # proton's Message.encode() would drop an all-default header, and the SDK would then
    # report a delivery count of None, which the adapter's "+ 1" would hide.
    (stored,) = codec.parse_transfer(_encoded(ServiceBusMessage(b"x", message_id="m")))
    wire = codec.encode_delivery(stored, delivery_count=0, annotations={})

    header = decode_payload(memoryview(wire)).header
    assert header is not None
    assert (header.delivery_count, header.first_acquirer) == (0, True)


def test_the_broker_tells_batches_from_binary_bodies() -> None:
    # A batch is one transfer whose data sections each hold a whole encoded message.
    one, two = (_encoded(ServiceBusMessage(b"x", message_id=i)) for i in ("a", "b"))
    batch = bytes(encode_payload(bytearray(), BatchMessage(data=[one, two])))
    # A body that starts like an encoded section but is not a whole message.
    binary = _encoded(ServiceBusMessage(b"\x00Su\xa0", message_id="c"))

    assert [m.message_id for m in codec.parse_transfer(batch)] == ["a", "b"]
    assert [m.message_id for m in codec.parse_transfer(binary)] == ["c"]


def test_the_broker_answers_management_requests_it_does_not_support(
    broker: ServiceBusTestBroker,
) -> None:
    # Unanswered, the SDK would wait 60 s and then raise OperationTimeoutError.
    client = ServiceBusClient.from_connection_string(broker.connection_string, retry_total=0)
    with (
        client,
        client.get_subscription_receiver(ORDERS, BILLING) as receiver,
        pytest.raises(ServiceBusError, match="not-implemented") as raised,
    ):
        receiver.peek_messages(timeout=30)

    assert not isinstance(raised.value, OperationTimeoutError)


def _encoded(message: ServiceBusMessage) -> bytes:
    """``message`` as the SDK puts it on the wire."""
    amqp = PyamqpTransport.to_outgoing_amqp_message(message.raw_amqp_message)
    return bytes(encode_payload(bytearray(), amqp))
