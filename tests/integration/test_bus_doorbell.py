"""The embedded bus wakes a waiting receiver with a datagram (its doorbell) instead of polling:
a receiver that would otherwise look only once in ``idle_check_s`` (set longer than the test's
hang guard here) still gets what another process sends, and a scheduled message when due."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shared.bus.port import OutgoingMessage, ReceivedMessage
from shared.bus.sqlite import SqliteMessageBus
from shared.topology import SubscriptionSpec, Topology
from tests.waiting import WAIT_S, wait_until

TOPOLOGY: Topology = {"t": (SubscriptionSpec("s", lock_duration_s=30.0),)}


def _bus(path: Path) -> SqliteMessageBus:
    # Never a look of its own before the hang guard: only the doorbell (or a due time) wakes.
    return SqliteMessageBus(
        path, topology=TOPOLOGY, poll_interval_s=WAIT_S * 2, idle_check_s=WAIT_S * 2
    )


def _message(**fields: object) -> OutgoingMessage:
    return OutgoingMessage(body=b"x", message_id=str(uuid.uuid4()), **fields)  # type: ignore[arg-type]


def _receive_in_thread(bus: SqliteMessageBus) -> tuple[threading.Thread, list[ReceivedMessage]]:
    got: list[ReceivedMessage] = []
    thread = threading.Thread(
        target=lambda: got.extend(bus.receive_messages("t", "s", max_wait_time=WAIT_S)),
        daemon=True,
    )
    thread.start()
    return thread, got


def _registered(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as conn:
        return [
            (int(port), int(pid)) for port, pid in conn.execute("SELECT port, pid FROM doorbells")
        ]


def _send_from_child(path: str) -> None:
    bus = SqliteMessageBus(Path(path), topology=TOPOLOGY)
    bus.send_messages("t", [_message()])
    bus.close()


def test_a_waiting_receiver_is_woken_by_a_send_from_another_process(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    receiver = _bus(path)
    thread, got = _receive_in_thread(receiver)
    wait_until(lambda: _registered(path), "the receiver's doorbell")
    child = multiprocessing.get_context("spawn").Process(target=_send_from_child, args=(str(path),))
    child.start()
    child.join(WAIT_S)
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(got) == 1
    receiver.complete_message(got[0])
    receiver.close()
    assert _registered(path) == [], "close() unregisters the doorbell"


def test_a_scheduled_message_is_received_when_due_without_a_ring(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    receiver = _bus(path)
    receiver.send_messages(
        "t", [_message(scheduled_enqueue_time=datetime.now(UTC) + timedelta(seconds=0.5))]
    )
    thread, got = _receive_in_thread(receiver)
    thread.join(WAIT_S)
    assert len(got) == 1
    receiver.close()


def test_an_abandoned_message_wakes_a_waiting_receiver(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    first, second = _bus(path), _bus(path)
    first.send_messages("t", [_message()])
    (taken,) = first.receive_messages("t", "s", max_wait_time=WAIT_S)
    thread, got = _receive_in_thread(second)
    wait_until(lambda: len(_registered(path)) == 2, "both doorbells")
    first.abandon_message(taken)
    thread.join(WAIT_S)
    assert [m.message_id for m in got] == [taken.message_id]
    first.close()
    second.close()


def test_doorbells_of_processes_gone_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "bus.sqlite"
    bus = _bus(path)
    bus.receive_messages("t", "s", max_wait_time=0.01)
    gone = multiprocessing.get_context("spawn").Process(target=os.getpid)
    gone.start()
    gone.join(WAIT_S)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO doorbells VALUES (1, ?, 0)", (gone.pid,))
    other = _bus(path)
    other.receive_messages("t", "s", max_wait_time=0.01)
    assert 1 not in [port for port, _ in _registered(path)]
    assert len(_registered(path)) == 2
    bus.close()
    other.close()


def test_interrupt_receives_ends_waits_now_and_later_until_resumed(tmp_path: Path) -> None:
    bus = _bus(tmp_path / "bus.sqlite")
    thread, got = _receive_in_thread(bus)
    wait_until(lambda: _registered(tmp_path / "bus.sqlite"), "the receiver's doorbell")

    bus.interrupt_receives()
    thread.join(WAIT_S)
    assert not thread.is_alive(), "a waiting receive returned"
    bus.send_messages("t", [_message()])
    # A receive started after the interrupt takes nothing, however long it may wait.
    assert bus.receive_messages("t", "s", max_wait_time=WAIT_S) == []

    bus.resume_receives()
    [message] = bus.receive_messages("t", "s", max_wait_time=WAIT_S)
    bus.complete_message(message)
    assert got == []
    bus.close()
