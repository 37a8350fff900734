"""The embedded message bus: Service Bus semantics on one SQLite file.

The coordinator and every worker open the same file from their own processes. WAL mode lets
idle receivers poll with plain reads that never wait for a writer. Every state change runs in a
``BEGIN IMMEDIATE`` transaction, which takes SQLite's single write lock before reading, so two
competing consumers cannot both see a message as unlocked: the second one's read happens after
the first one's lock is committed.

Tables: ``subscriptions`` (declared entities and their settings), ``messages`` (one row per
accepted message, sequence number = rowid), ``deliveries`` (each subscription's copy of a
message with its own lock, delivery count and dead-letter state) and ``accepted_message_ids``
(duplicate detection). A copy is visible once ``visible_at`` has passed; receiving it moves
``visible_at`` to the end of the lock, so lock expiry needs no background sweeper.

Waiting without polling: a receiving process binds a UDP socket on 127.0.0.1 (its *doorbell*,
registered in table ``doorbells``) and waits on it; whoever makes a message visible (send,
abandon) rings every registered doorbell with one datagram after committing. Between rings a
waiting receiver looks at the table only when the earliest copy it is waiting for (a scheduled
message, an expiring lock) becomes visible, and at the latest every ``idle_check_s`` (a lost
datagram, a doorbell not yet registered when the sender read the table). So an idle stack costs
next to no CPU and a hop costs a datagram instead of half a poll interval. ``poll_interval_s``
remains the pause after losing a race for a visible message, and dead-letter receives poll.
``interrupt_receives`` ends every wait of this bus object at once (a stopping worker or
coordinator), so receivers may wait long without slowing a stop.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from shared.bus.port import OutgoingMessage, ReceivedMessage
from shared.errors import BusUnavailableError, ConfigurationError, MessageLockLostError
from shared.files import unwritable_reason
from shared.topology import Topology, require_subscription, require_topic

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    lock_duration_s REAL NOT NULL,
    max_delivery_count INTEGER NOT NULL,
    PRIMARY KEY (topic, name)
);
-- AUTOINCREMENT so that a sequence number is never reused after its message is deleted.
CREATE TABLE IF NOT EXISTS messages (
    sequence_number INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    correlation_id TEXT,
    subject TEXT,
    application_properties TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued_time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    sequence_number INTEGER NOT NULL REFERENCES messages,
    topic TEXT NOT NULL,
    subscription TEXT NOT NULL,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    visible_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT UNIQUE,
    dead_letter_reason TEXT,
    dead_letter_error_description TEXT,
    PRIMARY KEY (sequence_number, subscription)
);
CREATE INDEX IF NOT EXISTS deliveries_by_queue
    ON deliveries (topic, subscription, dead_lettered, sequence_number);
CREATE TABLE IF NOT EXISTS accepted_message_ids (
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (topic, message_id)
);
CREATE INDEX IF NOT EXISTS accepted_message_ids_by_age ON accepted_message_ids (accepted_at);
CREATE TABLE IF NOT EXISTS doorbells (
    port INTEGER PRIMARY KEY,
    pid INTEGER NOT NULL,
    registered_at REAL NOT NULL
);
"""

_VISIBLE = "d.topic = :topic AND d.subscription = :subscription AND d.visible_at <= :now"

# A dead-letter receive must also notice copies that are about to be dead-lettered for having
# used up their deliveries, or it would wait for an active-queue receive to move them first.
_ANY_VISIBLE_ACTIVE = f"SELECT 1 FROM deliveries d WHERE {_VISIBLE} AND d.dead_lettered = 0 LIMIT 1"
_ANY_VISIBLE_DEAD_LETTER = f"""
SELECT 1 FROM deliveries d JOIN subscriptions s ON s.topic = d.topic AND s.name = d.subscription
WHERE {_VISIBLE} AND (d.dead_lettered = 1 OR d.delivery_count >= s.max_delivery_count)
LIMIT 1
"""

# When the first copy of the subscription's active queue is (or becomes) visible.
_NEXT_VISIBLE = """
SELECT MIN(visible_at) FROM deliveries
WHERE topic = :topic AND subscription = :subscription AND dead_lettered = 0
"""

_SELECT_VISIBLE = f"""
SELECT m.*, d.subscription, d.delivery_count, d.dead_letter_reason,
       d.dead_letter_error_description
FROM deliveries d JOIN messages m USING (sequence_number)
WHERE {_VISIBLE} AND d.dead_lettered = :dead_lettered
ORDER BY d.sequence_number
LIMIT :limit
"""


class SqliteMessageBus:
    def __init__(
        self,
        path: Path,
        *,
        topology: Topology,
        duplicate_detection_window_s: float = 600.0,
        poll_interval_s: float = 0.02,
        busy_timeout_s: float = 5.0,
        idle_check_s: float = 10.0,
    ) -> None:
        self._path = path
        self._idle_check_s = idle_check_s
        # Set by interrupt_receives: receives return at once, empty, until resume_receives.
        self._interrupted = threading.Event()
        self._doorbell: _Doorbell | None = None
        self._doorbell_lock = threading.Lock()
        self._topology = topology
        self._duplicate_detection_window_s = duplicate_detection_window_s
        self._poll_interval_s = poll_interval_s
        self._busy_timeout_s = busy_timeout_s
        self._idle_connections: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        problem = unwritable_reason(path.parent)
        if problem is not None:
            raise ConfigurationError(
                f"bus database {path}: cannot write in {path.parent}: {problem}"
            )
        try:
            self._declare_topology()
        except sqlite3.DatabaseError as exc:  # e.g. a read-only or corrupt file
            raise ConfigurationError(f"bus database {path}: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteMessageBus({str(self._path)!r})"

    # -- MessageBus ------------------------------------------------------------------------

    def send_messages(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        require_topic(self._topology, topic)
        for message in messages:
            when = message.scheduled_enqueue_time
            if when is not None and when.tzinfo is None:
                raise ValueError(f"scheduled_enqueue_time of {message.message_id!r} is naive")
        with self._transaction() as conn:
            now = _now()
            subscriptions = [
                name
                for (name,) in conn.execute(
                    "SELECT name FROM subscriptions WHERE topic = ?", (topic,)
                )
            ]
            # Like Service Bus, a topic without subscriptions accepts and drops messages.
            if not subscriptions:
                return
            conn.execute(
                "DELETE FROM accepted_message_ids WHERE accepted_at <= ?",
                (now - self._duplicate_detection_window_s,),
            )
            enqueued = 0
            for message in messages:
                if self._is_duplicate(conn, topic, message.message_id, now):
                    continue
                self._enqueue(conn, topic, subscriptions, message, now)
                enqueued += 1
            doorbells = _doorbell_ports(conn) if enqueued else []
        _ring(doorbells, topic)

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
        deadline = time.monotonic() + max_wait_time
        doorbell = None if dead_letter or max_wait_time <= 0 else self._doorbell_now()
        while True:
            if self._interrupted.is_set():
                return []
            rung = doorbell.rings(topic) if doorbell is not None else 0
            if dead_letter:
                due: float | None = (
                    0.0 if self._may_have_visible(topic, subscription, True) else None
                )
            else:
                due = self._next_visible(topic, subscription)
            pause = self._poll_interval_s if doorbell is None else self._idle_check_s
            if due is not None and due <= _now():
                received = self._lock_visible(topic, subscription, max_message_count, dead_letter)
                if received:
                    return received
                pause = self._poll_interval_s  # taken by a competitor meanwhile: look again soon
            elif due is not None:
                pause = min(pause, max(due - _now(), 0.001))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            if doorbell is None:
                self._interrupted.wait(min(pause, remaining))
            else:
                doorbell.wait(topic, rung, min(pause, remaining), self._interrupted)

    def interrupt_receives(self) -> None:
        self._interrupted.set()
        doorbell = self._doorbell
        if doorbell is not None:
            doorbell.wake()

    def resume_receives(self) -> None:
        self._interrupted.clear()

    def complete_message(self, message: ReceivedMessage) -> None:
        with self._transaction() as conn:
            sequence_number = self._require_lock(conn, message, _now())
            conn.execute("DELETE FROM deliveries WHERE lock_token = ?", (message.lock_token,))
            # The message row is shared by all subscriptions; the last copy out removes it.
            conn.execute(
                "DELETE FROM messages WHERE sequence_number = :seq AND NOT EXISTS "
                "(SELECT 1 FROM deliveries WHERE sequence_number = :seq)",
                {"seq": sequence_number},
            )

    def abandon_message(self, message: ReceivedMessage) -> None:
        with self._transaction() as conn:
            now = _now()
            self._require_lock(conn, message, now)
            conn.execute(
                "UPDATE deliveries SET lock_token = NULL, visible_at = ? WHERE lock_token = ?",
                (now, message.lock_token),
            )
            doorbells = _doorbell_ports(conn)
        _ring(doorbells, message.topic)

    def dead_letter_message(
        self, message: ReceivedMessage, *, reason: str, error_description: str = ""
    ) -> None:
        with self._transaction() as conn:
            now = _now()
            self._require_lock(conn, message, now)
            conn.execute(
                "UPDATE deliveries SET dead_lettered = 1, lock_token = NULL, visible_at = ?, "
                "dead_letter_reason = ?, dead_letter_error_description = ? WHERE lock_token = ?",
                (now, reason, error_description, message.lock_token),
            )

    def renew_message_lock(self, message: ReceivedMessage) -> datetime:
        with self._transaction() as conn:
            now = _now()
            self._require_lock(conn, message, now)
            lock_duration_s, _ = self._subscription_settings(
                conn, message.topic, message.subscription
            )
            locked_until = now + lock_duration_s
            conn.execute(
                "UPDATE deliveries SET visible_at = ? WHERE lock_token = ?",
                (locked_until, message.lock_token),
            )
        return _datetime(locked_until)

    def close(self) -> None:
        """Close idle connections now, and those in use when their call returns."""
        with self._doorbell_lock:
            doorbell, self._doorbell = self._doorbell, None
        if doorbell is not None and doorbell.pid == os.getpid():
            with suppress(Exception), self._transaction() as conn:
                conn.execute("DELETE FROM doorbells WHERE port = ?", (doorbell.port,))
            doorbell.close()
        with self._pool_lock:
            self._closed = True
            for conn in self._idle_connections:
                conn.close()
            self._idle_connections.clear()

    # -- topology --------------------------------------------------------------------------

    def _declare_topology(self) -> None:
        self._enable_wal()
        with self._transaction() as conn:
            # Not executescript(): it commits first, and several processes may start at once.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO subscriptions (topic, name, lock_duration_s, max_delivery_count) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, name) DO UPDATE SET "
                "lock_duration_s = excluded.lock_duration_s, "
                "max_delivery_count = excluded.max_delivery_count",
                [
                    (topic, spec.name, spec.lock_duration_s, spec.max_delivery_count)
                    for topic, specs in self._topology.items()
                    for spec in specs
                ],
            )

    def _enable_wal(self) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite refuses at once
        # instead of waiting busy_timeout when processes starting together collide on it.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                with self._connection() as conn:
                    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise self._unavailable(exc) from exc
            time.sleep(self._poll_interval_s)
        # SQLite quietly keeps its old mode where WAL is impossible (some network file systems).
        if mode != "wal":
            raise ConfigurationError(f"bus database {self._path} cannot use WAL mode ({mode})")

    @staticmethod
    def _subscription_settings(
        conn: sqlite3.Connection, topic: str, subscription: str
    ) -> tuple[float, int]:
        # Read from the file, not this process's topology: the last process to start wins.
        row = conn.execute(
            "SELECT lock_duration_s, max_delivery_count FROM subscriptions "
            "WHERE topic = ? AND name = ?",
            (topic, subscription),
        ).fetchone()
        return float(row["lock_duration_s"]), int(row["max_delivery_count"])

    # -- sending ---------------------------------------------------------------------------

    @staticmethod
    def _is_duplicate(conn: sqlite3.Connection, topic: str, message_id: str, now: float) -> bool:
        inserted = conn.execute(
            "INSERT OR IGNORE INTO accepted_message_ids (topic, message_id, accepted_at) "
            "VALUES (?, ?, ?)",
            (topic, message_id, now),
        )
        return inserted.rowcount == 0

    @staticmethod
    def _enqueue(
        conn: sqlite3.Connection,
        topic: str,
        subscriptions: list[str],
        message: OutgoingMessage,
        now: float,
    ) -> None:
        scheduled = message.scheduled_enqueue_time
        # Service Bus reports a scheduled message's enqueued time as when it became active.
        visible_at = max(now, scheduled.timestamp()) if scheduled else now
        inserted = conn.execute(
            "INSERT INTO messages (topic, message_id, correlation_id, subject, "
            "application_properties, body, enqueued_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                topic,
                message.message_id,
                message.correlation_id,
                message.subject,
                json.dumps(dict(message.application_properties)),
                message.body,
                visible_at,
            ),
        )
        conn.executemany(
            "INSERT INTO deliveries (sequence_number, topic, subscription, visible_at) "
            "VALUES (?, ?, ?, ?)",
            [(inserted.lastrowid, topic, name, visible_at) for name in subscriptions],
        )

    # -- receiving -------------------------------------------------------------------------

    def _may_have_visible(self, topic: str, subscription: str, dead_letter: bool) -> bool:
        # A plain read: idle pollers must not queue for the write lock behind senders.
        query = _ANY_VISIBLE_DEAD_LETTER if dead_letter else _ANY_VISIBLE_ACTIVE
        with self._errors_translated(), self._connection() as conn:
            parameters = {"topic": topic, "subscription": subscription, "now": _now()}
            row = conn.execute(query, parameters).fetchone()
        return row is not None

    def _next_visible(self, topic: str, subscription: str) -> float | None:
        """When the subscription's first active copy is (or becomes) visible; None if empty.
        A plain read: idle receivers must not queue for the write lock behind senders."""
        with self._errors_translated(), self._connection() as conn:
            parameters = {"topic": topic, "subscription": subscription}
            (due,) = conn.execute(_NEXT_VISIBLE, parameters).fetchone()
        return None if due is None else float(due)

    def _doorbell_now(self) -> _Doorbell:
        """This process's doorbell, made and registered on its first receive."""
        doorbell = self._doorbell
        if doorbell is not None and doorbell.pid == os.getpid():
            return doorbell
        with self._doorbell_lock:
            if self._doorbell is None or self._doorbell.pid != os.getpid():
                doorbell = _Doorbell()
                with self._transaction() as conn:
                    # Doorbells of processes gone (a crash skips close()) are forgotten.
                    for port, pid in conn.execute("SELECT port, pid FROM doorbells").fetchall():
                        if not _alive(pid):
                            conn.execute("DELETE FROM doorbells WHERE port = ?", (port,))
                    conn.execute(
                        "INSERT OR REPLACE INTO doorbells (port, pid, registered_at) "
                        "VALUES (?, ?, ?)",
                        (doorbell.port, doorbell.pid, _now()),
                    )
                self._doorbell = doorbell
            return self._doorbell

    def _lock_visible(
        self, topic: str, subscription: str, limit: int, dead_letter: bool
    ) -> list[ReceivedMessage]:
        with self._transaction() as conn:
            now = _now()
            lock_duration_s, max_delivery_count = self._subscription_settings(
                conn, topic, subscription
            )
            self._dead_letter_exhausted(conn, topic, subscription, max_delivery_count, now)
            rows = conn.execute(
                _SELECT_VISIBLE,
                {
                    "topic": topic,
                    "subscription": subscription,
                    "now": now,
                    "dead_lettered": int(dead_letter),
                    "limit": limit,
                },
            ).fetchall()
            locked_until = now + lock_duration_s
            locks = [(str(uuid.uuid4()), row) for row in rows]
            conn.executemany(
                "UPDATE deliveries SET delivery_count = delivery_count + 1, lock_token = ?, "
                "visible_at = ? WHERE sequence_number = ? AND subscription = ?",
                [
                    (token, locked_until, row["sequence_number"], subscription)
                    for token, row in locks
                ],
            )
        return [_received(row, token, locked_until) for token, row in locks]

    @staticmethod
    def _dead_letter_exhausted(
        conn: sqlite3.Connection, topic: str, subscription: str, max_delivery_count: int, now: float
    ) -> None:
        # A copy due for redelivery that has had all its deliveries goes to the dead-letter
        # queue instead. Done lazily here, so expired locks need no background sweeper.
        conn.execute(
            "UPDATE deliveries SET dead_lettered = 1, lock_token = NULL, "
            "dead_letter_reason = :reason, dead_letter_error_description = :description "
            "WHERE topic = :topic AND subscription = :subscription AND dead_lettered = 0 "
            "AND visible_at <= :now AND delivery_count >= :max",
            {
                "reason": MAX_DELIVERY_COUNT_EXCEEDED,
                "description": (
                    f"Message could not be consumed after {max_delivery_count} delivery attempts."
                ),
                "topic": topic,
                "subscription": subscription,
                "now": now,
                "max": max_delivery_count,
            },
        )

    # -- settling --------------------------------------------------------------------------

    @staticmethod
    def _require_lock(conn: sqlite3.Connection, message: ReceivedMessage, now: float) -> int:
        """The message's sequence number, if ``message`` still holds its lock."""
        row = conn.execute(
            "SELECT sequence_number FROM deliveries WHERE lock_token = ? AND visible_at > ?",
            (message.lock_token, now),
        ).fetchone()
        if row is None:
            raise MessageLockLostError(
                f"the lock on message {message.message_id!r} (sequence number "
                f"{message.sequence_number}) in {message.topic}/{message.subscription} "
                "expired or the message was already settled"
            )
        return int(row["sequence_number"])

    # -- connections -----------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for this call alone.

        Pooled rather than one per thread: a worker starts a short-lived thread per message to
        renew its lock, and per-thread connections would pile up with their file handles.
        """
        with self._pool_lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            conn = self._idle_connections.pop() if self._idle_connections else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed:
                    conn.close()
                else:
                    self._idle_connections.append(conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_s,
            isolation_level=None,  # transactions are begun explicitly
            check_same_thread=False,  # pooled: used by one thread at a time, not always the same
        )
        conn.row_factory = sqlite3.Row
        # In WAL mode this survives a crashed process; only an OS crash loses the last commits,
        # which is acceptable for a local bus and saves an fsync per message.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._errors_translated(), self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # A pooled connection must go back without an open transaction.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _errors_translated(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            # busy_timeout already waited; a lock still held by then is worth a retry later,
            # and so is a full disk or a failing one.
            if _is_busy(exc):
                raise self._unavailable(exc) from exc
            if exc.sqlite_errorcode & 0xFF in _DISK_TROUBLE:
                raise BusUnavailableError(f"bus database {self._path}: {exc}") from exc
            raise

    def _unavailable(self, exc: sqlite3.OperationalError) -> BusUnavailableError:
        return BusUnavailableError(f"bus database {self._path} is busy: {exc}")


_DISK_TROUBLE = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _now() -> float:
    return datetime.now(UTC).timestamp()


class _Doorbell:
    """A UDP socket on loopback that a reader thread waits on; each datagram names a topic,
    bumps that topic's ring count and wakes the threads of this process waiting on it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._rings: dict[str, int] = {}
        self._changed = threading.Condition()
        self._closed = False
        threading.Thread(target=self._listen, name=f"bus-doorbell-{self.port}", daemon=True).start()

    def rings(self, topic: str) -> int:
        return self._rings.get(topic, 0)

    def wait(self, topic: str, seen: int, timeout_s: float, interrupted: threading.Event) -> None:
        """Until a ring for ``topic`` after ``seen`` (``rings(topic)`` read before looking),
        ``interrupted`` (then ``wake()``) or the timeout."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._rings.get(topic, 0) != seen or self._closed or interrupted.is_set(),
                timeout_s,
            )

    def wake(self) -> None:
        """Make the waiting threads look at their conditions again."""
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        self._closed = True
        # Wakes the reader (it exits on seeing _closed) before the socket goes.
        _ring([self.port], "")
        with self._changed:
            self._changed.notify_all()

    def _listen(self) -> None:
        try:
            while not self._closed:
                topic = self._socket.recv(512).decode(errors="replace")
                with self._changed:
                    self._rings[topic] = self._rings.get(topic, 0) + 1
                    self._changed.notify_all()
        except OSError:
            pass
        finally:
            self._socket.close()


def _doorbell_ports(conn: sqlite3.Connection) -> list[int]:
    return [int(port) for (port,) in conn.execute("SELECT port FROM doorbells")]


_RING_SOCKET = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _ring(ports: Sequence[int], topic: str) -> None:
    """One datagram naming ``topic`` to each doorbell; one lost or refused only delays a
    receiver's look (``idle_check_s``)."""
    payload = topic.encode()
    for port in ports:
        with suppress(OSError):
            _RING_SOCKET.sendto(payload, ("127.0.0.1", port))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _received(row: sqlite3.Row, lock_token: str, locked_until: float) -> ReceivedMessage:
    return ReceivedMessage(
        topic=row["topic"],
        subscription=row["subscription"],
        body=bytes(row["body"]),
        message_id=row["message_id"],
        correlation_id=row["correlation_id"],
        subject=row["subject"],
        application_properties=json.loads(row["application_properties"]),
        delivery_count=row["delivery_count"] + 1,
        sequence_number=row["sequence_number"],
        enqueued_time=_datetime(row["enqueued_time"]),
        lock_token=lock_token,
        locked_until=_datetime(locked_until),
        dead_letter_reason=row["dead_letter_reason"],
        dead_letter_error_description=row["dead_letter_error_description"],
    )
