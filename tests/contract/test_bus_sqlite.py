"""The bus contract against the embedded SQLite adapter, plus what only that adapter promises:
several OS processes sharing one file, busy-database errors and settings kept in the file."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from shared.bus.sqlite import SqliteMessageBus
from shared.errors import BusUnavailableError
from shared.topology import SubscriptionSpec, Topology
from tests.contract.bus_contract import (
    AUDIT,
    BILLING,
    ORDERS,
    SHIPPING,
    BusContract,
    MakeBus,
    outgoing,
)


class TestSqliteMessageBus(BusContract):
    @pytest.fixture
    def make_bus(self, tmp_path: Path) -> Iterator[MakeBus]:
        buses: list[SqliteMessageBus] = []

        def make(topology: Topology) -> SqliteMessageBus:
            buses.append(SqliteMessageBus(tmp_path / "bus.sqlite", topology=topology))
            return buses[-1]

        yield make
        for bus in buses:
            bus.close()


def single_subscription(*, max_delivery_count: int = 10, lock_duration_s: float = 30.0) -> Topology:
    return {ORDERS: (SubscriptionSpec(BILLING, max_delivery_count, lock_duration_s),)}


# -- several processes on one file -----------------------------------------------------------

CONSUMERS = 3
MESSAGES = 200


def consume_until_idle(
    path: Path, batch_size: int, start: Barrier, results: Queue[list[str]]
) -> None:
    """Runs in a spawned process: complete messages until none came for two seconds."""
    start.wait()
    bus = SqliteMessageBus(path, topology=single_subscription())
    completed: list[str] = []
    while received := bus.receive_messages(
        ORDERS, BILLING, max_message_count=batch_size, max_wait_time=2.0
    ):
        for message in received:
            time.sleep(0.002)  # some work, so that one process cannot take everything
            bus.complete_message(message)
            completed.append(message.message_id)
    bus.close()
    results.put(completed)


def test_processes_competing_on_one_subscription_complete_each_message_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bus.sqlite"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(CONSUMERS + 1)
    results: Queue[list[str]] = context.Queue()
    consumers = [
        context.Process(target=consume_until_idle, args=(path, batch_size, start, results))
        for batch_size in (1, 3, 10)
    ]
    for process in consumers:
        process.start()
    start.wait(timeout=60)
    # All four processes create the file's schema at the same moment.
    producer = SqliteMessageBus(path, topology=single_subscription())

    sent = [f"m{i:03}" for i in range(MESSAGES)]
    for i in range(0, MESSAGES, 10):  # sent while the consumers are already receiving
        producer.send_messages(ORDERS, [outgoing(message_id=m) for m in sent[i : i + 10]])
    per_process = [results.get(timeout=60) for _ in consumers]
    for process in consumers:
        process.join(timeout=10)

    assert [process.exitcode for process in consumers] == [0] * CONSUMERS
    assert sorted(m for completed in per_process for m in completed) == sent
    assert sum(1 for completed in per_process if completed) >= 2, "no competition happened"
    assert producer.receive_messages(ORDERS, BILLING, max_wait_time=0) == []
    producer.close()


# -- SQLite specifics ------------------------------------------------------------------------


def test_a_write_lock_held_past_the_busy_timeout_raises_bus_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    bus = SqliteMessageBus(path, topology=single_subscription(), busy_timeout_s=0.1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BusUnavailableError, match="busy"):
            bus.send_messages(ORDERS, [outgoing()])
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    bus.send_messages(ORDERS, [outgoing()])
    assert len(bus.receive_messages(ORDERS, BILLING, max_wait_time=1.0)) == 1
    bus.close()


def test_a_message_id_is_accepted_again_after_the_duplicate_detection_window(
    tmp_path: Path,
) -> None:
    bus = SqliteMessageBus(
        tmp_path / "bus.sqlite", topology=single_subscription(), duplicate_detection_window_s=0.2
    )
    bus.send_messages(ORDERS, [outgoing(b"first", message_id="same")])
    time.sleep(0.3)
    bus.send_messages(ORDERS, [outgoing(b"second", message_id="same")])

    received = bus.receive_messages(ORDERS, BILLING, max_message_count=5, max_wait_time=1.0)

    assert [m.body for m in received] == [b"first", b"second"]
    bus.close()


def test_reopening_with_new_subscription_settings_applies_them(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nested" / "bus.sqlite"
    SqliteMessageBus(path, topology=single_subscription()).close()

    bus = SqliteMessageBus(
        path, topology=single_subscription(max_delivery_count=1, lock_duration_s=2.0)
    )
    bus.send_messages(ORDERS, [outgoing()])
    message = bus.receive_messages(ORDERS, BILLING, max_wait_time=1.0)[0]

    assert message.locked_until < datetime.now(UTC) + timedelta(seconds=2.5)
    bus.abandon_message(message)
    dead = bus.receive_messages(ORDERS, BILLING, max_wait_time=1.0, dead_letter=True)
    assert [m.dead_letter_reason for m in dead] == ["MaxDeliveryCountExceeded"]
    bus.close()


def test_a_subscription_declared_by_another_client_gets_its_copy(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    sender = SqliteMessageBus(path, topology=single_subscription())
    receiver = SqliteMessageBus(path, topology=BusContract.topology())

    sender.send_messages(ORDERS, [outgoing(message_id="fan-out")])

    assert [m.message_id for m in receiver.receive_messages(ORDERS, SHIPPING)] == ["fan-out"]
    sender.close()
    receiver.close()


def test_sequence_numbers_increase_across_topics(tmp_path: Path) -> None:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=BusContract.topology())
    for topic in (ORDERS, AUDIT, ORDERS):
        bus.send_messages(topic, [outgoing()])

    first, second = bus.receive_messages(ORDERS, BILLING, max_message_count=2)
    (audit,) = bus.receive_messages(AUDIT, "archive")

    assert first.sequence_number < audit.sequence_number < second.sequence_number
    bus.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_short_lived_threads_do_not_leak_connections(tmp_path: Path) -> None:
    # A worker renews each message's lock from a thread of its own.
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=single_subscription())
    bus.send_messages(ORDERS, [outgoing()])
    open_files = len(list(Path("/proc/self/fd").iterdir()))

    for _ in range(50):
        thread = threading.Thread(target=bus.send_messages, args=(ORDERS, [outgoing()]))
        thread.start()
        thread.join()

    assert len(list(Path("/proc/self/fd").iterdir())) - open_files < 10
    bus.close()


def test_a_closed_bus_refuses_further_use(tmp_path: Path) -> None:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=single_subscription())
    bus.close()

    with pytest.raises(RuntimeError, match="closed"):
        bus.send_messages(ORDERS, [outgoing()])
