"""Behaviour every ``MessageBus`` adapter must show, written against the port only.

An adapter's test module subclasses ``BusContract`` and provides a ``make_bus`` fixture:
``make_bus(topology)`` returns a bus client. Every client made within one test must reach the
same broker state (the same SQLite file, the same Service Bus namespace), each test must start
with empty subscriptions, and the fixture closes the clients it made. Tests use the fixed
topology of ``BusContract.topology`` and random message ids, so a broker whose entities are
declared up front and whose duplicate detection outlives one test run can run them too.

Timing knobs are class attributes so that an adapter with coarser limits (a Service Bus lock
lasts at least 5 s) can stretch them. No check races the clock on a busy machine: a message that
should arrive is waited for up to the generous ``WAIT_S`` (it costs nothing when it comes), and
a check that holds only while a lock (or a schedule) has not run out yet is made only when the
clock says it still applies (``still_before``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.bus.port import MessageBus, OutgoingMessage, ReceivedMessage
from shared.errors import ConfigurationError, MessageLockLostError
from shared.topology import SubscriptionSpec, Topology
from tests.waiting import WAIT_S

MakeBus = Callable[[Topology], MessageBus]

ORDERS = "orders"  # fans out to two subscriptions
BILLING = "billing"
SHIPPING = "shipping"
AUDIT = "audit"  # a second topic, to show messages stay on their own topic
ARCHIVE = "archive"
RETRIES = "retries"  # its subscription dead-letters on the second failed delivery
FLAKY = "flaky"
FLAKY_MAX_DELIVERY_COUNT = 2


def outgoing(body: bytes = b"payload", **fields: Any) -> OutgoingMessage:
    fields.setdefault("message_id", str(uuid.uuid4()))
    return OutgoingMessage(body=body, **fields)


class BusContract:
    lock_duration_s = 1.0
    # How long to wait for a message that should arrive (a guard against hanging: the wait
    # ends when it comes), and for one that must not.
    arrival_timeout_s = WAIT_S
    absence_wait_s = 0.3
    # Allowed difference between the broker's clock and this machine's.
    clock_tolerance_s = 0.1
    schedule_delay_s = 1.0

    @classmethod
    def topology(cls) -> Topology:
        def sub(name: str, max_delivery_count: int = 10) -> SubscriptionSpec:
            return SubscriptionSpec(name, max_delivery_count, cls.lock_duration_s)

        return {
            ORDERS: (sub(BILLING), sub(SHIPPING)),
            AUDIT: (sub(ARCHIVE),),
            RETRIES: (sub(FLAKY, FLAKY_MAX_DELIVERY_COUNT),),
        }

    @pytest.fixture
    def bus(self, make_bus: MakeBus) -> MessageBus:
        return make_bus(self.topology())

    # -- helpers ---------------------------------------------------------------------------

    def receive_one(
        self, bus: MessageBus, topic: str, subscription: str, *, dead_letter: bool = False
    ) -> ReceivedMessage:
        received = bus.receive_messages(
            topic, subscription, max_wait_time=self.arrival_timeout_s, dead_letter=dead_letter
        )
        assert len(received) == 1, f"expected one message on {topic}/{subscription}"
        return received[0]

    def receive_all(
        self, bus: MessageBus, topic: str, subscription: str, count: int
    ) -> list[ReceivedMessage]:
        """``count`` messages, received in as many calls as the adapter needs."""
        received: list[ReceivedMessage] = []
        deadline = time.monotonic() + self.arrival_timeout_s
        while len(received) < count and time.monotonic() < deadline:
            received += bus.receive_messages(
                topic, subscription, max_message_count=count - len(received), max_wait_time=1.0
            )
        assert len(received) == count, f"expected {count} messages on {topic}/{subscription}"
        return received

    def assert_empty(
        self, bus: MessageBus, topic: str, subscription: str, *, dead_letter: bool = False
    ) -> None:
        leftover = bus.receive_messages(
            topic, subscription, max_wait_time=self.absence_wait_s, dead_letter=dead_letter
        )
        assert [m.message_id for m in leftover] == []

    def still_before(self, moment: datetime) -> bool:
        """Whether a check that holds only until ``moment`` can still be made (with the
        clock tolerance and the absence wait to spare): on a busy machine it may be too late,
        and then the check is skipped rather than failed."""
        spare = timedelta(seconds=self.clock_tolerance_s + self.absence_wait_s)
        return datetime.now(UTC) + spare < moment

    def assert_empty_until(
        self, bus: MessageBus, topic: str, subscription: str, moment: datetime
    ) -> None:
        """``assert_empty`` for a message that must stay hidden until ``moment``."""
        if not self.still_before(moment):
            return
        leftover = bus.receive_messages(
            topic, subscription, max_wait_time=self.absence_wait_s, dead_letter=False
        )
        if leftover and datetime.now(UTC) >= moment:
            return  # the receive itself ran past the moment: nothing to conclude
        assert [m.message_id for m in leftover] == []

    def wait_for_lock_expiry(self, message: ReceivedMessage) -> None:
        remaining = (message.locked_until - datetime.now(UTC)).total_seconds()
        time.sleep(max(remaining, 0) + self.clock_tolerance_s + 0.1)

    # -- topics and subscriptions ----------------------------------------------------------

    def test_a_message_is_copied_to_every_subscription_of_its_topic(self, bus: MessageBus) -> None:
        sent = outgoing()
        bus.send_messages(ORDERS, [sent])

        billing = self.receive_one(bus, ORDERS, BILLING)
        shipping = self.receive_one(bus, ORDERS, SHIPPING)

        assert billing.message_id == shipping.message_id == sent.message_id
        assert (billing.subscription, shipping.subscription) == (BILLING, SHIPPING)
        bus.complete_message(billing)
        bus.complete_message(shipping)  # settling one copy leaves the other alone
        self.assert_empty(bus, AUDIT, ARCHIVE)

    def test_messages_are_received_in_sending_order(self, bus: MessageBus) -> None:
        first, second = outgoing(b"1"), outgoing(b"2")
        bus.send_messages(ORDERS, [first])
        bus.send_messages(ORDERS, [second, outgoing(b"3"), outgoing(b"4")])

        received = self.receive_all(bus, ORDERS, BILLING, 4)

        assert [m.body for m in received] == [b"1", b"2", b"3", b"4"]
        sequence_numbers = [m.sequence_number for m in received]
        assert sequence_numbers == sorted(set(sequence_numbers))

    def test_max_message_count_caps_one_receive(self, bus: MessageBus) -> None:
        bus.send_messages(ORDERS, [outgoing() for _ in range(5)])

        batch = bus.receive_messages(
            ORDERS, BILLING, max_message_count=2, max_wait_time=self.arrival_timeout_s
        )

        assert 1 <= len(batch) <= 2
        self.receive_all(bus, ORDERS, BILLING, 5 - len(batch))

    def test_message_fields_round_trip(self, bus: MessageBus) -> None:
        properties = {"text": "x", "count": 7, "ratio": 0.5, "whole_float": 2.0, "flag": True}
        sent = outgoing(
            b"\x00\xffbinary",
            correlation_id="run-1",
            subject="stage_started",
            application_properties=properties,
        )
        before = datetime.now(UTC)
        bus.send_messages(ORDERS, [sent, outgoing(b"")])
        after = datetime.now(UTC)

        full, bare = self.receive_all(bus, ORDERS, BILLING, 2)

        assert (full.body, full.message_id) == (sent.body, sent.message_id)
        assert (full.correlation_id, full.subject) == ("run-1", "stage_started")
        assert dict(full.application_properties) == properties
        assert {k: type(v) for k, v in full.application_properties.items()} == {
            k: type(v) for k, v in properties.items()
        }
        tolerance = timedelta(seconds=self.clock_tolerance_s)
        assert before - tolerance <= full.enqueued_time <= after + tolerance
        assert full.locked_until > full.enqueued_time
        assert full.delivery_count == 1
        assert full.lock_token and full.lock_token != bare.lock_token
        assert full.dead_letter_reason is None
        assert (bare.body, bare.correlation_id, bare.subject) == (b"", None, None)
        assert dict(bare.application_properties) == {}

    def test_undeclared_topic_or_subscription_is_a_configuration_error(
        self, bus: MessageBus
    ) -> None:
        with pytest.raises(ConfigurationError, match="no-such-topic"):
            bus.send_messages("no-such-topic", [outgoing()])
        with pytest.raises(ConfigurationError, match="no-such-topic"):
            bus.receive_messages("no-such-topic", BILLING, max_wait_time=0)
        with pytest.raises(ConfigurationError, match="no-such-subscription"):
            bus.receive_messages(ORDERS, "no-such-subscription", max_wait_time=0)

    def test_messages_outlive_the_client_that_sent_them(self, make_bus: MakeBus) -> None:
        sender = make_bus(self.topology())
        sent = outgoing()
        sender.send_messages(ORDERS, [sent])
        sender.close()

        receiver = make_bus(self.topology())

        assert self.receive_one(receiver, ORDERS, BILLING).message_id == sent.message_id

    # -- receiving -------------------------------------------------------------------------

    def test_receive_waits_then_returns_nothing_when_empty(self, bus: MessageBus) -> None:
        started = time.monotonic()

        assert bus.receive_messages(ORDERS, BILLING, max_wait_time=self.absence_wait_s) == []
        assert time.monotonic() - started >= self.absence_wait_s * 0.9

    def test_receive_returns_a_message_that_arrives_while_waiting(self, make_bus: MakeBus) -> None:
        receiver, sender = make_bus(self.topology()), make_bus(self.topology())
        sent = outgoing()
        timer = threading.Timer(self.absence_wait_s, sender.send_messages, (ORDERS, [sent]))
        timer.start()
        try:
            received = receiver.receive_messages(
                ORDERS, BILLING, max_wait_time=self.arrival_timeout_s
            )
        finally:
            timer.join()

        assert [m.message_id for m in received] == [sent.message_id]

    def test_a_locked_message_is_hidden_from_other_consumers(self, make_bus: MakeBus) -> None:
        first, second = make_bus(self.topology()), make_bus(self.topology())
        first.send_messages(ORDERS, [outgoing()])

        message = self.receive_one(first, ORDERS, BILLING)

        self.assert_empty_until(second, ORDERS, BILLING, message.locked_until)
        first.complete_message(message)

    def test_competing_consumers_each_get_distinct_messages(self, make_bus: MakeBus) -> None:
        shared, other = make_bus(self.topology()), make_bus(self.topology())
        sent = {f"m{i}" for i in range(100)}
        shared.send_messages(ORDERS, [outgoing(message_id=m) for m in sorted(sent)])
        received: list[str] = []
        errors: list[BaseException] = []
        deadline = time.monotonic() + self.arrival_timeout_s

        def consume(bus: MessageBus) -> None:
            try:
                while len(received) < len(sent) and time.monotonic() < deadline:
                    for message in bus.receive_messages(
                        ORDERS, BILLING, max_message_count=5, max_wait_time=0.2
                    ):
                        bus.complete_message(message)
                        received.append(message.message_id)
            except BaseException as exc:
                errors.append(exc)

        # Three threads share one client (as a worker's threads do), one uses its own.
        threads = [threading.Thread(target=consume, args=(bus,)) for bus in [shared] * 3 + [other]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        assert sorted(received) == sorted(sent)

    # -- settling --------------------------------------------------------------------------

    def test_a_completed_message_is_gone(self, bus: MessageBus) -> None:
        bus.send_messages(ORDERS, [outgoing()])

        bus.complete_message(self.receive_one(bus, ORDERS, BILLING))

        self.assert_empty(bus, ORDERS, BILLING)

    def test_an_abandoned_message_is_redelivered_with_a_higher_delivery_count(
        self, bus: MessageBus
    ) -> None:
        sent = outgoing()
        bus.send_messages(ORDERS, [sent])
        first = self.receive_one(bus, ORDERS, BILLING)

        bus.abandon_message(first)
        again = self.receive_one(bus, ORDERS, BILLING)

        assert again.message_id == sent.message_id
        assert (first.delivery_count, again.delivery_count) == (1, 2)
        assert again.lock_token != first.lock_token
        with pytest.raises(MessageLockLostError):
            bus.complete_message(first)
        bus.complete_message(again)

    def test_settling_a_message_twice_loses_the_lock(self, bus: MessageBus) -> None:
        bus.send_messages(ORDERS, [outgoing()])
        message = self.receive_one(bus, ORDERS, BILLING)
        bus.complete_message(message)

        with pytest.raises(MessageLockLostError):
            bus.complete_message(message)
        with pytest.raises(MessageLockLostError):
            bus.abandon_message(message)

    def test_a_message_whose_lock_expired_is_redelivered(self, bus: MessageBus) -> None:
        bus.send_messages(ORDERS, [outgoing()])
        first = self.receive_one(bus, ORDERS, BILLING)

        self.wait_for_lock_expiry(first)
        again = self.receive_one(bus, ORDERS, BILLING)

        assert again.message_id == first.message_id
        assert again.delivery_count == 2
        with pytest.raises(MessageLockLostError):
            bus.complete_message(first)
        bus.complete_message(again)

    def test_settling_or_renewing_after_lock_expiry_raises_lock_lost(self, bus: MessageBus) -> None:
        bus.send_messages(ORDERS, [outgoing()])
        message = self.receive_one(bus, ORDERS, BILLING)

        self.wait_for_lock_expiry(message)

        with pytest.raises(MessageLockLostError):
            bus.complete_message(message)
        with pytest.raises(MessageLockLostError):
            bus.abandon_message(message)
        with pytest.raises(MessageLockLostError):
            bus.dead_letter_message(message, reason="TooLate")
        with pytest.raises(MessageLockLostError):
            bus.renew_message_lock(message)
        self.assert_empty(bus, ORDERS, BILLING, dead_letter=True)

    def test_renewing_a_lock_keeps_the_message_past_its_first_expiry(
        self, make_bus: MakeBus
    ) -> None:
        bus, rival = make_bus(self.topology()), make_bus(self.topology())
        bus.send_messages(ORDERS, [outgoing()])
        message = self.receive_one(bus, ORDERS, BILLING)
        # Renew well before the first expiry; a machine too busy to do so in time has nothing
        # to show here.
        if not self.still_before(message.locked_until):
            pytest.skip("the lock ran out before the test could renew it (busy machine)")
        time.sleep(max((message.locked_until - datetime.now(UTC)).total_seconds() * 0.5, 0))

        renewed_until = bus.renew_message_lock(message)

        assert renewed_until > message.locked_until
        self.wait_for_lock_expiry(message)
        # Past the first expiry, before the renewed one: the rival still sees nothing.
        if self.still_before(renewed_until):
            assert rival.receive_messages(ORDERS, BILLING, max_wait_time=0.1) == []
        bus.complete_message(message)

    # -- dead-lettering --------------------------------------------------------------------

    def test_a_dead_lettered_message_waits_in_the_dead_letter_queue(self, bus: MessageBus) -> None:
        sent = outgoing(b"bad")
        bus.send_messages(ORDERS, [sent])
        message = self.receive_one(bus, ORDERS, BILLING)

        bus.dead_letter_message(message, reason="MalformedMessage", error_description="not JSON")

        self.assert_empty(bus, ORDERS, BILLING)  # dead-lettered: no lock can bring it back
        dead = self.receive_one(bus, ORDERS, BILLING, dead_letter=True)
        assert (dead.message_id, dead.body) == (sent.message_id, b"bad")
        assert dead.dead_letter_reason == "MalformedMessage"
        assert dead.dead_letter_error_description == "not JSON"
        # The other subscription's copy and dead-letter queue are untouched.
        self.assert_empty(bus, ORDERS, SHIPPING, dead_letter=True)
        bus.complete_message(self.receive_one(bus, ORDERS, SHIPPING))

        bus.complete_message(dead)
        self.assert_empty(bus, ORDERS, BILLING, dead_letter=True)

    def test_abandoning_past_the_max_delivery_count_dead_letters(self, bus: MessageBus) -> None:
        sent = outgoing()
        bus.send_messages(RETRIES, [sent])
        for delivery in range(1, FLAKY_MAX_DELIVERY_COUNT + 1):
            message = self.receive_one(bus, RETRIES, FLAKY)
            assert message.delivery_count == delivery
            bus.abandon_message(message)

        dead = self.receive_one(bus, RETRIES, FLAKY, dead_letter=True)

        assert dead.message_id == sent.message_id
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert dead.dead_letter_error_description
        self.assert_empty(bus, RETRIES, FLAKY)

    def test_lock_expiry_past_the_max_delivery_count_dead_letters(self, bus: MessageBus) -> None:
        sent = outgoing()
        bus.send_messages(RETRIES, [sent])
        bus.abandon_message(self.receive_one(bus, RETRIES, FLAKY))
        last = self.receive_one(bus, RETRIES, FLAKY)

        self.wait_for_lock_expiry(last)  # as if the consumer had crashed

        self.assert_empty(bus, RETRIES, FLAKY)
        dead = self.receive_one(bus, RETRIES, FLAKY, dead_letter=True)
        assert (dead.message_id, dead.dead_letter_reason) == (
            sent.message_id,
            "MaxDeliveryCountExceeded",
        )

    # -- duplicate detection and scheduling ------------------------------------------------

    def test_a_message_id_seen_before_is_dropped_for_every_subscription(
        self, bus: MessageBus
    ) -> None:
        message_id = str(uuid.uuid4())
        bus.send_messages(ORDERS, [outgoing(b"first", message_id=message_id)])
        bus.send_messages(ORDERS, [outgoing(b"again", message_id=message_id), outgoing(b"other")])

        for subscription in (BILLING, SHIPPING):
            received = self.receive_all(bus, ORDERS, subscription, 2)
            assert [m.body for m in received] == [b"first", b"other"]
            for message in received:
                bus.complete_message(message)
            self.assert_empty(bus, ORDERS, subscription)

        # Still a duplicate after the first one was consumed: the window counts from sending.
        bus.send_messages(ORDERS, [outgoing(b"late", message_id=message_id)])
        self.assert_empty(bus, ORDERS, BILLING)

    def test_the_same_message_id_on_another_topic_is_not_a_duplicate(self, bus: MessageBus) -> None:
        message_id = str(uuid.uuid4())
        bus.send_messages(ORDERS, [outgoing(message_id=message_id)])
        bus.send_messages(AUDIT, [outgoing(message_id=message_id)])

        assert self.receive_one(bus, AUDIT, ARCHIVE).message_id == message_id

    def test_a_scheduled_message_is_hidden_until_its_time(self, bus: MessageBus) -> None:
        """Order and clock, without racing it: the message scheduled ahead is never received
        before its time, so one looked for before then is the immediate one, sent after it.
        A busy machine that only looks after the scheduled time gets both, in either order."""
        due = datetime.now(UTC) + timedelta(seconds=self.schedule_delay_s)
        early = due - timedelta(seconds=self.clock_tolerance_s)
        scheduled, immediate = outgoing(scheduled_enqueue_time=due), outgoing()
        bus.send_messages(ORDERS, [scheduled, immediate])

        first = self.receive_one(bus, ORDERS, BILLING)
        first_at = datetime.now(UTC)
        bus.complete_message(first)
        if first_at < early:
            # Received before the scheduled time: it is the immediate one, and nothing else
            # shows until then.
            assert first.message_id == immediate.message_id
            self.assert_empty_until(bus, ORDERS, BILLING, due)
        second = self.receive_one(bus, ORDERS, BILLING)
        second_at = datetime.now(UTC)
        bus.complete_message(second)

        assert {first.message_id, second.message_id} == {
            scheduled.message_id,
            immediate.message_id,
        }
        # The scheduled one was received (and so delivered) no earlier than its time.
        scheduled_at = first_at if first.message_id == scheduled.message_id else second_at
        assert scheduled_at >= early
