"""The run store: runs, their outbox and the inbox of processed messages, on SQLite or PostgreSQL;
and the blob triggers' state: the blob events seen (duplicate detection) and the pending
bursts of uploads waiting for their quiet window.

``apply`` is the unit of work: it loads a run, asks a pure function for a ``Decision`` and
writes the new state, the decision's commands (outbox) and the processed message's id (inbox)
in one transaction. Concurrent writers (the API thread, the event consumer, the watchdog, a
second coordinator) are reconciled optimistically: every update checks the version it read,
and a loser re-reads and decides again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.schema import CreateSchema

from coordinator.domain import (
    ACTIVE_RUN_STATUSES,
    UNFINISHED_RUN_STATUSES,
    DeadlineExpired,
    Decision,
    GroupStatus,
    MemberSlot,
    Run,
    RunGroup,
    RunNotFound,
    RunStatus,
    StageState,
    WorkerSeen,
    settle_group,
)
from shared.bus.port import OutgoingMessage
from shared.errors import ConfigurationError, PermanentError, RetryableError
from shared.files import unwritable_reason
from shared.messages import CancelStage, encode, utcnow
from shared.topology import CONTROL_TOPIC, command_topic

SQLITE_BUSY_TIMEOUT_MS = 10_000

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageStart:
    """A worker started a stage at (the bus's) ``at``: see ``RunStore.record_stage_start``."""

    stage: str
    worker: str
    at: datetime


def _note_stage_start(conn: Connection, start: StageStart, beats: bool | None) -> bool:
    """``record_stage_start`` in ``conn``'s transaction; ``beats``: whether the worker has a
    heartbeat row, if already read (None: look it up). Returns whether the worker is silent."""
    params = {"stage": start.stage, "worker": start.worker}
    if beats is None:
        beats = conn.scalar(_HEARTBEAT_OF, params) is not None
    if beats:
        return False
    key = {"silent_key": f"{start.stage}/{start.worker}"}
    if conn.execute(_SILENT_SEEN, {**key, "at": start.at}).rowcount:
        return True
    # Seen at ``at`` or later already (a redelivery): a look costs less than a failed insert.
    if conn.scalar(_SILENT_HAS, key) is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    _SILENT_ADD,
                    {"key": key["silent_key"], **params, "seen_at": start.at},
                )
        except IntegrityError:
            pass  # recorded by another coordinator meanwhile
    return True


def _note_stage_start_aside(conn: Connection, start: StageStart, beats: bool | None) -> None:
    """``_note_stage_start`` where it rides on another write: best effort, as on its own, so
    a failure of it never fails that write. The savepoint is only paid where there is more
    than a known heartbeat to see (a silent worker, or a run not found)."""
    if beats:
        return
    try:
        with conn.begin_nested():
            _note_stage_start(conn, start, beats)
    except Exception as exc:
        log.warning("could not record that %s started %s: %s", start.worker, start.stage, exc)


def _pause_after_lost_race(tries: int) -> None:
    """A random, growing pause (up to 0.2 s) so that writers that collided do not collide
    again."""
    time.sleep(random.uniform(0, min(0.002 * 2**tries, 0.2)))


class ConcurrencyConflict(RetryableError):
    """Other writers kept changing the run while this one tried to apply its decision."""

    def __init__(self, run_id: UUID, tries: int) -> None:
        super().__init__(f"run {run_id} changed under {tries} consecutive attempts to update it")
        self.run_id = run_id


class GroupNotFound(PermanentError):
    def __init__(self, group_id: UUID) -> None:
        super().__init__(f"run group {group_id} not found")
        self.group_id = group_id


class StoreUnavailableError(RetryableError):
    """The database could not be reached or stayed locked."""


class TriggerConflict(RetryableError):
    """Other writers kept changing the same pending bursts while this one recorded events."""


class _UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on both databases.

    SQLite has no time-zone type; storing naive UTC there keeps its text comparisons right."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} would be ambiguous in the run store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Json = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData()


def uuid_prefix_range(prefix: str) -> tuple[UUID, UUID]:
    """The smallest and largest UUID whose hex starts with ``prefix`` (hex digits, dashes
    ignored; validated by the caller): a range both SQLite and PostgreSQL compare by index."""
    digits = prefix.replace("-", "").lower()
    return UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))


runs = Table(
    "runs",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("recipe", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", _UtcDateTime, nullable=False),
    Column("updated_at", _UtcDateTime, nullable=False),
    # The current stage's deadline, copied out of ``state`` so the watchdog can use an index.
    Column("deadline", _UtcDateTime, nullable=True),
    Column("state", _Json, nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_runs_created_at", "created_at"),
    Index("ix_runs_status_created_at", "status", "created_at"),
    Index("ix_runs_deadline", "deadline"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("topic", String(200), nullable=False),
    Column("message_id", String(400), nullable=False),
    Column("correlation_id", String(100), nullable=True),
    Column("subject", String(200), nullable=True),
    Column("body", LargeBinary, nullable=False),
    Column("application_properties", _Json, nullable=False),
    Column("scheduled_enqueue_time", _UtcDateTime, nullable=True),
    Column("created_at", _UtcDateTime, nullable=False),
    Column("published_at", _UtcDateTime, nullable=True),
    Index("ix_outbox_unpublished", "published_at", "id"),
)

processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", String(400), primary_key=True),
    Column("processed_at", _UtcDateTime, nullable=False),
)

# One row, rewritten by each readiness probe: a store that cannot commit a write is not ready.
write_probe = Table(
    "write_probe",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("written_at", _UtcDateTime, nullable=False),
)


# Blob events already counted: one row for the event id and one for the (blob, etag) pair, so
# neither a redelivered event nor a second event about the same write counts twice.
trigger_events_seen = Table(
    "trigger_events_seen",
    metadata,
    # sha256 of the event id or of the blob name and etag (either can be long).
    Column("key", String(64), primary_key=True),
    Column("description", Text, nullable=False),
    Column("seen_at", _UtcDateTime, nullable=False),
    Index("ix_trigger_events_seen_seen_at", "seen_at"),
)

# Uploads that will start one run together once ``due_at`` has passed.
trigger_bursts = Table(
    "trigger_bursts",
    metadata,
    # sha256 of (recipe, data, params): the run the burst will start.
    Column("key", String(64), primary_key=True),
    Column("recipe", String(200), nullable=False),
    Column("data", Text, nullable=False),
    Column("params", _Json, nullable=False),
    Column("due_at", _UtcDateTime, nullable=False),
    # The latest due_at may move to however many uploads keep arriving.
    Column("fire_by", _UtcDateTime, nullable=False),
    Column("details", _Json, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", _UtcDateTime, nullable=False),
    Index("ix_trigger_bursts_due_at", "due_at"),
)


# Run groups: the group's own state, and one row per member (its run, in member order) whose
# status and waiting_since mirror the run's, written in the same transaction as the run, so
# admission reads a group's members without loading every run.
run_groups = Table(
    "run_groups",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("status", String(20), nullable=False),
    Column("created_at", _UtcDateTime, nullable=False),
    Column("state", _Json, nullable=False),
    Column("version", Integer, nullable=False),
    Index("ix_run_groups_created_at", "created_at"),
    Index("ix_run_groups_status", "status"),
)

run_group_members = Table(
    "run_group_members",
    metadata,
    Column("group_id", Uuid, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("run_id", Uuid, nullable=False, unique=True),
    Column("entity", String(200), nullable=False),
    Column("status", String(20), nullable=False),
    Column("waiting_since", _UtcDateTime, nullable=True),
    UniqueConstraint("group_id", "entity", name="uq_run_group_members_entity"),
    Index("ix_run_group_members_status", "status"),
)


# The stage workers' latest heartbeats (shared.messages.WorkerHeartbeat), one row per worker
# process, dated on the coordinator's side of the bus: what the queue deadline goes by.
worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("worker_id", String(64), primary_key=True),
    Column("worker", String(200), nullable=False),
    Column("stage", String(20), nullable=False),
    Column("checked_at", _UtcDateTime, nullable=False),
    Column("idle_since", _UtcDateTime, nullable=True),
    Column("expires_at", _UtcDateTime, nullable=False),
    Column("slots", Integer, nullable=False),
    Column("busy", Integer, nullable=False),
    Index("ix_worker_heartbeats_expires_at", "expires_at"),
)

# Workers that started a stage but send no heartbeat (an older version, or heartbeats turned
# off): their stage's liveness is unknown, so its queue deadline stays a plain timeout.
silent_workers = Table(
    "silent_workers",
    metadata,
    # "<stage>/<worker>": one key column, as retention deletes by key.
    Column("key", String(230), primary_key=True),
    Column("stage", String(20), nullable=False),
    Column("worker", String(200), nullable=False),
    Column("seen_at", _UtcDateTime, nullable=False),
)


# Cron schedules: per schedule (a hash of its definition), the latest tick acted on.
schedules = Table(
    "schedules",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("description", Text, nullable=False),
    Column("last_tick", _UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
)


# Each model's promotions as the coordinator saw them made (a run's tag stage promoting its
# version, an operator's promote or rollback through the API), in order: the dashboard's
# champion marks and GET /models/{name}/promotions, without asking the registry.
promotions = Table(
    "promotions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(256), nullable=False),
    Column("version", String(64), nullable=False),
    Column("promoted_at", _UtcDateTime, nullable=False),
    Column("run_id", Uuid, nullable=True),
    Column("actor", String(500), nullable=True),
    Column("reason", Text, nullable=True),
    Column("previous_version", String(64), nullable=True),
    Index("ix_promotions_model_name_id", "model_name", "id"),
)


@dataclass(frozen=True)
class PromotionRecord:
    model_name: str
    version: str
    promoted_at: datetime
    # The run whose tag stage promoted it; None for an operator's change.
    run_id: UUID | None
    actor: str | None
    reason: str | None
    previous_version: str | None


# The per-run hot path's statements, built once: SQLAlchemy then reuses their cache keys and
# compiled forms instead of rebuilding both for every event (most of a decision's CPU).
_INBOX_HAS = select(processed_messages.c.message_id).where(
    processed_messages.c.message_id == bindparam("inbox_id")
)
_INBOX_ADD = insert(processed_messages)
_RUN_STATE = select(runs.c.state).where(runs.c.id == bindparam("run_id"))
_RUN_STATE_AND_VERSION = select(runs.c.state, runs.c.version).where(
    runs.c.id == bindparam("run_id")
)
# The same, and whether the worker that starts a stage of it ever sent a heartbeat: that
# bookkeeping rides on the read a StageStarted makes anyway, costing no statement of its own.
_RUN_STATE_VERSION_AND_BEATS = select(
    runs.c.state,
    runs.c.version,
    exists()
    .where(
        worker_heartbeats.c.stage == bindparam("stage"),
        worker_heartbeats.c.worker == bindparam("worker"),
    )
    .label("beats"),
).where(runs.c.id == bindparam("run_id"))
_HEARTBEAT_OF = (
    select(worker_heartbeats.c.worker_id)
    .where(
        worker_heartbeats.c.stage == bindparam("stage"),
        worker_heartbeats.c.worker == bindparam("worker"),
    )
    .limit(1)
)
_SILENT_SEEN = (
    update(silent_workers)
    .where(
        silent_workers.c.key == bindparam("silent_key"), silent_workers.c.seen_at < bindparam("at")
    )
    .values(seen_at=bindparam("at"))
)
_SILENT_HAS = select(silent_workers.c.key).where(silent_workers.c.key == bindparam("silent_key"))
_SILENT_ADD = insert(silent_workers)
_RUN_ADD = insert(runs)
# The new values come as parameters named after their columns.
_RUN_REPLACE = update(runs).where(
    runs.c.id == bindparam("run_id"), runs.c.version == bindparam("read_version")
)
_MEMBER_STATUS = (
    update(run_group_members)
    .where(run_group_members.c.run_id == bindparam("member_run_id"))
    .values(status=bindparam("new_status"), waiting_since=bindparam("new_waiting_since"))
)
_OUTBOX_ADD = insert(outbox)
_PROMOTION_ADD = insert(promotions)
_OUTBOX_PENDING = (
    select(outbox)
    .where(outbox.c.published_at.is_(None))
    .order_by(outbox.c.id)
    .limit(bindparam("limit"))
)
_OUTBOX_PUBLISHED = update(outbox).where(outbox.c.id.in_(bindparam("ids", expanding=True)))


@dataclass(frozen=True)
class TriggerHit:
    """One blob event that counts towards the run (recipe, data, params)."""

    event_id: str
    blob_name: str
    etag: str
    recipe: str
    data: str
    params: dict[str, Any]
    # Start once no other hit for the same run arrived for this long; 0: at once (a marker).
    quiet_s: float
    # ... but no later than this after the burst's first hit.
    max_wait_s: float
    rule: str = ""
    # A rule that starts a run group (shared.groups.GroupRule, as JSON) instead of a run.
    group: dict[str, Any] | None = None


@dataclass(frozen=True)
class PendingBurst:
    key: str
    recipe: str
    data: str
    params: dict[str, Any]
    due_at: datetime
    details: dict[str, Any]
    version: int


# Something a start must take in its own transaction (a pending burst, a schedule's tick):
# False means another writer took it first, and nothing starts.
Claim = Callable[[Connection], bool]


@dataclass(frozen=True)
class ScheduleState:
    key: str
    # The latest tick acted on.
    last_tick: datetime
    version: int


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    message: OutgoingMessage


# A run's entity lives in its state (no column of its own): read from the JSON, unindexed.
run_entity = runs.c.state["entity"].as_string()


def _run_filters(
    query: Select[Any],
    status: RunStatus | None,
    id_prefix: str | None,
    recipe: str | None,
    entity: str | None,
) -> Select[Any]:
    if status is not None:
        query = query.where(runs.c.status == status)
    if id_prefix:
        query = query.where(runs.c.id.between(*uuid_prefix_range(id_prefix)))
    if recipe is not None:
        query = query.where(runs.c.recipe == recipe)
    if entity is not None:
        query = query.where(run_entity == entity)
    return query


class RunStore:
    def __init__(
        self,
        engine: Engine,
        *,
        schema: str | None = None,
        max_tries: int = 10,
    ) -> None:
        # Every statement names unqualified tables; a schema (tests, shared databases) is
        # substituted at execution time.
        self._engine = (
            engine.execution_options(schema_translate_map={None: schema}) if schema else engine
        )
        self._schema = schema
        self._max_tries = max_tries
        database = engine.url.database
        # Where a SQLite database lives (None for an in-memory one, or another database).
        self._sqlite_directory = (
            Path(database).resolve().parent
            if engine.dialect.name == "sqlite" and database and database != ":memory:"
            else None
        )

    @classmethod
    def from_url(
        cls, url: str, *, schema: str | None = None, password: Callable[[], str] | None = None
    ) -> RunStore:
        """``password``: called for each new connection (an Entra ID access token, which
        expires, for PostgreSQL with Microsoft Entra authentication)."""
        # A SQLite file has no server connection that can go stale: no ping per checkout.
        engine = create_engine(url, pool_pre_ping=make_url(url).get_backend_name() != "sqlite")
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _configure_sqlite)
        if password is not None:

            def set_password(
                _dialect: object, _record: object, _args: object, params: dict[str, Any]
            ) -> None:
                params["password"] = password()

            event.listen(engine, "do_connect", set_password)
        return cls(engine, schema=schema)

    def create_tables(self) -> None:
        """Raises StoreUnavailableError when the database cannot be reached (it may not be up
        yet: the coordinator's start-up retries), ConfigurationError naming the database and
        the cause for anything else."""
        where = self._engine.url.render_as_string(hide_password=True)
        if self._sqlite_directory is not None:
            directory = self._sqlite_directory
            problem = unwritable_reason(directory)
            if problem is not None:
                raise ConfigurationError(
                    f"run store {where}: cannot write in {directory}: {problem}"
                )
        try:
            with self._engine.begin() as conn:
                if self._schema:
                    conn.execute(CreateSchema(self._schema, if_not_exists=True))
                metadata.create_all(conn)
        except OperationalError as exc:
            raise StoreUnavailableError(f"run store {where}: {exc.orig}") from exc
        except DBAPIError as exc:
            raise ConfigurationError(f"run store {where}: {exc.orig}") from exc

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute(text("SELECT 1"))

    def check_writable(self, *, min_free_bytes: int = 0) -> None:
        """Raises StoreUnavailableError unless a write commits and, on SQLite, the database's
        disk has ``min_free_bytes`` free (a write may still fit in the WAL of a full disk)."""
        if self._sqlite_directory is not None:
            free = shutil.disk_usage(self._sqlite_directory).free
            if free < min_free_bytes:
                raise StoreUnavailableError(
                    f"run store disk nearly full: {free} bytes free in {self._sqlite_directory}"
                    f" (at least {min_free_bytes} needed)"
                )
        now = utcnow()
        try:
            with self._connection() as conn, conn.begin():
                written = conn.execute(
                    update(write_probe).where(write_probe.c.id == 1).values(written_at=now)
                )
                if written.rowcount == 0:
                    conn.execute(insert(write_probe).values(id=1, written_at=now))
        except IntegrityError:
            pass  # another coordinator wrote the row first: writing works
        except DBAPIError as exc:
            raise StoreUnavailableError(f"run store cannot write: {exc.orig}") from exc

    # --- unit of work ----------------------------------------------------------------------

    def apply(
        self,
        run_id: UUID,
        decide: Callable[[Run | None], Decision],
        *,
        inbox_message_id: str | None = None,
        stage_start: StageStart | None = None,
    ) -> Decision | None:
        """Decide on the stored run and save the result, its commands and the inbox marker
        atomically. Returns None, deciding nothing, if ``inbox_message_id`` was processed
        before. ``decide`` may run more than once (after a conflict), so it must be pure.
        ``stage_start``: record it as ``record_stage_start`` does, in the same transaction
        (also for a message processed before; not if this raises).

        Raises ConcurrencyConflict when every try lost a race, and whatever ``decide`` raises.
        """
        lost_race: Exception | None = None
        for tries in range(self._max_tries):
            try:
                with self._connection() as conn, conn.begin():
                    return self._apply_once(conn, run_id, decide, inbox_message_id, stage_start)
            except (_VersionChanged, IntegrityError) as exc:
                # IntegrityError: another writer inserted the same run or inbox marker first.
                lost_race = exc
            _pause_after_lost_race(tries)
        raise ConcurrencyConflict(run_id, self._max_tries) from lost_race

    def _apply_once(
        self,
        conn: Connection,
        run_id: UUID,
        decide: Callable[[Run | None], Decision],
        inbox_message_id: str | None,
        stage_start: StageStart | None = None,
    ) -> Decision | None:
        if inbox_message_id is not None and conn.scalar(_INBOX_HAS, {"inbox_id": inbox_message_id}):
            if stage_start is not None:
                # Nothing else is written here: on SQLite its savepoint may commit on its own.
                _note_stage_start_aside(conn, stage_start, None)
            return None
        if stage_start is None:
            row = conn.execute(_RUN_STATE_AND_VERSION, {"run_id": run_id}).one_or_none()
        else:
            row = conn.execute(
                _RUN_STATE_VERSION_AND_BEATS,
                {"run_id": run_id, "stage": stage_start.stage, "worker": stage_start.worker},
            ).one_or_none()
        current = Run.model_validate(row.state) if row else None
        decision = decide(current)
        new = decision.run
        values: dict[str, Any] = {
            "status": new.status,
            "updated_at": new.updated_at,
            "deadline": new.deadline,
            "state": new.model_dump(mode="json"),
        }
        if row is None:
            conn.execute(
                _RUN_ADD,
                {
                    "id": new.id,
                    "recipe": new.recipe,
                    "created_at": new.created_at,
                    "version": 1,
                    **values,
                },
            )
        elif new != current:
            updated = conn.execute(
                _RUN_REPLACE,
                {
                    "run_id": run_id,
                    "read_version": row.version,
                    "version": row.version + 1,
                    **values,
                },
            )
            if updated.rowcount != 1:
                raise _VersionChanged
        if new.group_id is not None and (
            current is None
            or (new.status, new.waiting_since) != (current.status, current.waiting_since)
        ):
            conn.execute(
                _MEMBER_STATUS,
                {
                    "member_run_id": new.id,
                    "new_status": new.status,
                    "new_waiting_since": new.waiting_since,
                },
            )
        promoted = _promotion_of(current, new)
        if promoted is not None:
            conn.execute(_PROMOTION_ADD, asdict(promoted))
        now = utcnow()
        if decision.commands:
            conn.execute(_OUTBOX_ADD, [_outbox_row(cmd, now) for cmd in _encoded(decision)])
        if inbox_message_id is not None:
            conn.execute(_INBOX_ADD, {"message_id": inbox_message_id, "processed_at": now})
        if stage_start is not None:
            # Last: pysqlite opens a transaction only before a write, so on SQLite a savepoint
            # opened before the run's writes would be a transaction of its own.
            _note_stage_start_aside(conn, stage_start, None if row is None else bool(row.beats))
        return decision

    # --- promotions ------------------------------------------------------------------------

    def record_promotion(self, promotion: PromotionRecord) -> None:
        with self._connection() as conn, conn.begin():
            conn.execute(insert(promotions).values(**asdict(promotion)))

    def list_promotions(self, model_name: str, *, limit: int = 1000) -> list[PromotionRecord]:
        """The model's latest ``limit`` promotions, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                select(promotions)
                .where(promotions.c.model_name == model_name)
                .order_by(promotions.c.id.desc())
                .limit(limit)
            ).all()
        return [
            PromotionRecord(
                model_name=row.model_name,
                version=row.version,
                promoted_at=row.promoted_at,
                run_id=row.run_id,
                actor=row.actor,
                reason=row.reason,
                previous_version=row.previous_version,
            )
            for row in reversed(rows)
        ]

    # --- blob triggers ---------------------------------------------------------------------

    def record_trigger_hits(self, hits: Sequence[TriggerHit], now: datetime) -> list[bool]:
        """Count each hit towards its pending burst unless its event id or its (blob, etag)
        was seen before; all in one transaction. Returns, per hit, whether it was new."""
        lost_race: Exception | None = None
        for tries in range(self._max_tries):
            try:
                with self._connection() as conn, conn.begin():
                    return [self._record_hit(conn, hit, now) for hit in hits]
            except (_VersionChanged, IntegrityError) as exc:
                # Another writer recorded the same event or burst first: decide again.
                lost_race = exc
            _pause_after_lost_race(tries)
        raise TriggerConflict(
            f"pending bursts changed under {self._max_tries} attempts to record blob events"
        ) from lost_race

    def _record_hit(self, conn: Connection, hit: TriggerHit, now: datetime) -> bool:
        seen = {
            _digest("event", hit.event_id): f"event {hit.event_id}",
            _digest("blob", hit.blob_name, hit.etag): f"blob {hit.blob_name} etag {hit.etag}",
        }
        if conn.scalar(
            select(func.count())
            .select_from(trigger_events_seen)
            .where(trigger_events_seen.c.key.in_(list(seen)))
        ):
            return False
        conn.execute(
            insert(trigger_events_seen),
            [{"key": key, "description": text, "seen_at": now} for key, text in seen.items()],
        )
        key = _digest(
            "burst",
            hit.recipe,
            hit.data,
            json.dumps(hit.params, sort_keys=True),
            *([json.dumps(hit.group, sort_keys=True)] if hit.group is not None else []),
        )
        this = {"blob": hit.blob_name, "event_id": hit.event_id, "received_at": now.isoformat()}
        row = conn.execute(select(trigger_bursts).where(trigger_bursts.c.key == key)).one_or_none()
        if row is None:
            fire_by = now + timedelta(seconds=hit.max_wait_s)
            details: dict[str, Any] = {"rule": hit.rule, "events": 1, "first": this, "last": this}
            if hit.group is not None:
                details["group"] = hit.group
            conn.execute(
                insert(trigger_bursts).values(
                    key=key,
                    recipe=hit.recipe,
                    data=hit.data,
                    params=hit.params,
                    due_at=min(now + timedelta(seconds=hit.quiet_s), fire_by),
                    fire_by=fire_by,
                    details=details,
                    version=1,
                    created_at=now,
                )
            )
            return True
        details = {**row.details, "events": row.details["events"] + 1, "last": this}
        updated = conn.execute(
            update(trigger_bursts)
            .where(trigger_bursts.c.key == key, trigger_bursts.c.version == row.version)
            .values(
                due_at=min(now + timedelta(seconds=hit.quiet_s), row.fire_by),
                details=details,
                version=row.version + 1,
            )
        )
        if updated.rowcount != 1:
            raise _VersionChanged
        return True

    def pending_bursts(
        self, *, due_by: datetime | None = None, limit: int = 100
    ) -> list[PendingBurst]:
        """Pending bursts, soonest first; only those due at ``due_by`` if given."""
        query = select(trigger_bursts).order_by(trigger_bursts.c.due_at).limit(limit)
        if due_by is not None:
            query = query.where(trigger_bursts.c.due_at <= due_by)
        with self._connection() as conn:
            rows = conn.execute(query).all()
        return [
            PendingBurst(
                key=row.key,
                recipe=row.recipe,
                data=row.data,
                params=row.params,
                due_at=row.due_at,
                details=row.details,
                version=row.version,
            )
            for row in rows
        ]

    def fire_burst(
        self, burst: PendingBurst, run_id: UUID, decide: Callable[[Run | None], Decision]
    ) -> Decision | None:
        """Remove the burst and start its run in one transaction. Returns None, starting
        nothing, if the burst changed (another upload arrived) or is gone (fired elsewhere)."""
        return self.start_claimed(self.burst_claim(burst), run_id, decide)

    def start_claimed(
        self, claim: Claim, run_id: UUID, decide: Callable[[Run | None], Decision]
    ) -> Decision | None:
        """Take ``claim`` and start the run in one transaction; None if the claim was lost."""
        for tries in range(self._max_tries):
            try:
                with self._connection() as conn, conn.begin():
                    if not claim(conn):
                        return None
                    return self._apply_once(conn, run_id, decide, None)
            except (_VersionChanged, IntegrityError):
                _pause_after_lost_race(tries)
        raise ConcurrencyConflict(run_id, self._max_tries)

    def burst_claim(self, burst: PendingBurst) -> Claim:
        """Removing ``burst``: lost if it changed (another upload arrived) or is gone."""
        return lambda conn: self._delete_burst(conn, burst)

    # --- schedules -------------------------------------------------------------------------

    def get_schedule(self, key: str) -> ScheduleState | None:
        with self._connection() as conn:
            row = conn.execute(
                select(schedules.c.last_tick, schedules.c.version).where(schedules.c.key == key)
            ).one_or_none()
        return None if row is None else ScheduleState(key, row.last_tick, row.version)

    def add_schedule(self, key: str, description: str, last_tick: datetime) -> None:
        """Start keeping ``key``'s state, as if ``last_tick`` had been acted on (no-op if it
        is kept already)."""
        try:
            with self._connection() as conn, conn.begin():
                conn.execute(
                    insert(schedules).values(
                        key=key, description=description, last_tick=last_tick, version=1
                    )
                )
        except IntegrityError:
            pass  # another coordinator added it first

    def schedule_claim(self, state: ScheduleState, tick: datetime) -> Claim:
        """Recording ``tick`` as acted on: lost if another writer recorded one first."""

        def claim(conn: Connection) -> bool:
            updated = conn.execute(
                update(schedules)
                .where(schedules.c.key == state.key, schedules.c.version == state.version)
                .values(last_tick=tick, version=state.version + 1)
            )
            return bool(updated.rowcount == 1)

        return claim

    def skip_tick(self, state: ScheduleState, tick: datetime) -> bool:
        """Record ``tick`` as acted on without starting anything (its data was unusable)."""
        with self._connection() as conn, conn.begin():
            return self.schedule_claim(state, tick)(conn)

    def drop_burst(self, burst: PendingBurst) -> bool:
        """Forget a burst that cannot start a run; False if it changed or is gone."""
        with self._connection() as conn, conn.begin():
            return self._delete_burst(conn, burst)

    def prune_trigger_events(self, seen_before: datetime) -> int:
        """Forget blob events seen before ``seen_before``; returns how many rows went."""
        with self._connection() as conn, conn.begin():
            result = conn.execute(
                delete(trigger_events_seen).where(trigger_events_seen.c.seen_at < seen_before)
            )
        return int(result.rowcount or 0)

    @staticmethod
    def _delete_burst(conn: Connection, burst: PendingBurst) -> bool:
        deleted = conn.execute(
            delete(trigger_bursts).where(
                trigger_bursts.c.key == burst.key, trigger_bursts.c.version == burst.version
            )
        )
        return bool(deleted.rowcount == 1)

    # --- run groups ------------------------------------------------------------------------

    def create_group(
        self,
        group: RunGroup,
        members: Sequence[tuple[UUID, str]],
        decide: Callable[[UUID], Callable[[Run | None], Decision]],
        *,
        claim: Claim | None = None,
    ) -> list[Decision] | None:
        """Insert the group, its members (run id, entity; in order) and their runs, deciding
        each run with ``decide(run_id)``, all in one transaction; with ``claim`` (a burst, a
        schedule's tick), take it in the same transaction, and return None, creating
        nothing, if it was lost."""
        for tries in range(self._max_tries):
            try:
                with self._connection() as conn, conn.begin():
                    if claim is not None and not claim(conn):
                        return None
                    conn.execute(
                        insert(run_groups).values(
                            id=group.id,
                            status=group.status,
                            created_at=group.created_at,
                            state=group.model_dump(mode="json"),
                            version=1,
                        )
                    )
                    if members:
                        conn.execute(
                            insert(run_group_members),
                            [
                                {
                                    "group_id": group.id,
                                    "position": position,
                                    "run_id": run_id,
                                    "entity": entity,
                                    "status": "waiting",
                                    "waiting_since": group.created_at,
                                }
                                for position, (run_id, entity) in enumerate(members)
                            ],
                        )
                    decisions = []
                    for run_id, _ in members:
                        decision = self._apply_once(conn, run_id, decide(run_id), None)
                        assert decision is not None
                        decisions.append(decision)
                    return decisions
            except _VersionChanged:
                _pause_after_lost_race(tries)
        raise ConcurrencyConflict(group.id, self._max_tries)

    def update_group(
        self,
        group_id: UUID,
        change: Callable[[RunGroup, list[MemberSlot]], tuple[RunGroup, list[UUID]]],
        decide: Callable[[UUID], Callable[[Run | None], Decision]],
        *,
        now: datetime,
    ) -> tuple[RunGroup, list[Decision]]:
        """The unit of work of a group: ``change`` gets the group and its members and returns
        the group's new state and the members to decide on (``decide(run_id)``); the group,
        those runs and their commands are written in one transaction, which a concurrent
        change of the same group makes try again, so admission never overfills a group.
        Afterwards the group's status follows its members'. Raises GroupNotFound."""
        lost_race: Exception | None = None
        for tries in range(self._max_tries):
            try:
                with self._connection() as conn, conn.begin():
                    return self._update_group_once(conn, group_id, change, decide, now)
            except (_VersionChanged, IntegrityError) as exc:
                lost_race = exc
            _pause_after_lost_race(tries)
        raise ConcurrencyConflict(group_id, self._max_tries) from lost_race

    def _update_group_once(
        self,
        conn: Connection,
        group_id: UUID,
        change: Callable[[RunGroup, list[MemberSlot]], tuple[RunGroup, list[UUID]]],
        decide: Callable[[UUID], Callable[[Run | None], Decision]],
        now: datetime,
    ) -> tuple[RunGroup, list[Decision]]:
        row = conn.execute(
            select(run_groups.c.state, run_groups.c.version).where(run_groups.c.id == group_id)
        ).one_or_none()
        if row is None:
            raise GroupNotFound(group_id)
        current = RunGroup.model_validate(row.state)
        group, chosen = change(current, self._member_slots(conn, group_id))
        decisions = []
        for run_id in chosen:
            decision = self._apply_once(conn, run_id, decide(run_id), None)
            assert decision is not None
            decisions.append(decision)
        counts = self._member_counts(conn, group_id)
        group = settle_group(group, counts, now)
        if not chosen and group == current:
            return group, decisions
        updated = conn.execute(
            update(run_groups)
            .where(run_groups.c.id == group_id, run_groups.c.version == row.version)
            .values(
                status=group.status, state=group.model_dump(mode="json"), version=row.version + 1
            )
        )
        if updated.rowcount != 1:
            raise _VersionChanged
        return group, decisions

    @staticmethod
    def _member_slots(conn: Connection, group_id: UUID) -> list[MemberSlot]:
        rows = conn.execute(
            select(
                run_group_members.c.run_id,
                run_group_members.c.position,
                run_group_members.c.status,
                run_group_members.c.waiting_since,
            )
            .where(run_group_members.c.group_id == group_id)
            .order_by(run_group_members.c.position)
        ).all()
        return [MemberSlot(r.run_id, r.position, r.status, r.waiting_since) for r in rows]

    @staticmethod
    def _member_counts(conn: Connection, group_id: UUID) -> dict[RunStatus, int]:
        rows = conn.execute(
            select(run_group_members.c.status, func.count())
            .where(run_group_members.c.group_id == group_id)
            .group_by(run_group_members.c.status)
        ).all()
        return {row[0]: int(row[1]) for row in rows}

    def get_group(self, group_id: UUID) -> tuple[RunGroup, dict[RunStatus, int]]:
        """The group and how many of its members are in each status."""
        with self._connection() as conn:
            state = conn.scalar(select(run_groups.c.state).where(run_groups.c.id == group_id))
            if state is None:
                raise GroupNotFound(group_id)
            return RunGroup.model_validate(state), self._member_counts(conn, group_id)

    def list_group_members(
        self, group_id: UUID, *, status: RunStatus | None = None
    ) -> list[tuple[int, str, Run]]:
        """(position, entity, run) of each member, in member order."""
        query = (
            select(run_group_members.c.position, run_group_members.c.entity, runs.c.state)
            .join(runs, runs.c.id == run_group_members.c.run_id)
            .where(run_group_members.c.group_id == group_id)
            .order_by(run_group_members.c.position)
        )
        if status is not None:
            query = query.where(run_group_members.c.status == status)
        with self._connection() as conn:
            rows = conn.execute(query).all()
        return [(row.position, row.entity, Run.model_validate(row.state)) for row in rows]

    def list_groups(
        self,
        *,
        status: GroupStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        id_prefix: str | None = None,
    ) -> tuple[list[tuple[RunGroup, dict[RunStatus, int]]], int]:
        """A page of groups, newest first, with their member counts; and how many match."""
        query = select(run_groups.c.id, run_groups.c.state).order_by(
            run_groups.c.created_at.desc(), run_groups.c.id.desc()
        )
        total = select(func.count()).select_from(run_groups)
        if status is not None:
            query = query.where(run_groups.c.status == status)
            total = total.where(run_groups.c.status == status)
        if id_prefix:
            within = run_groups.c.id.between(*uuid_prefix_range(id_prefix))
            query, total = query.where(within), total.where(within)
        with self._connection() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
            page = [
                (RunGroup.model_validate(row.state), self._member_counts(conn, row.id))
                for row in rows
            ]
            return page, int(conn.scalar(total) or 0)

    def list_unsettled_groups(self, limit: int = 1000) -> list[UUID]:
        """Groups with members still to run (or a finished group with a member retried on
        its own, waiting again), oldest first."""
        waiting = select(run_group_members.c.group_id).where(
            run_group_members.c.status == "waiting"
        )
        with self._connection() as conn:
            return list(
                conn.scalars(
                    select(run_groups.c.id)
                    .where((run_groups.c.status == "running") | run_groups.c.id.in_(waiting))
                    .order_by(run_groups.c.created_at)
                    .limit(limit)
                ).all()
            )

    def protected_outputs(self, *, updated_since: datetime, batch: int = 500) -> set[str]:
        """Stage outputs that cached-entry retention must keep: those of runs unfinished or
        updated since ``updated_since``, and of every run whose model was registered."""
        keep: set[str] = set()
        with self._connection() as conn:
            result = conn.execution_options(yield_per=batch).execute(
                select(runs.c.status, runs.c.updated_at, runs.c.state)
            )
            for row in result:
                run = Run.model_validate(row.state)
                if (
                    row.status in UNFINISHED_RUN_STATUSES
                    or row.updated_at >= updated_since
                    or run.stage("register").status == "succeeded"
                ):
                    keep.update(
                        prefix.rstrip("/")
                        for stage in run.stages
                        for prefix in stage.outputs.values()
                    )
        return keep

    # --- queries ---------------------------------------------------------------------------

    def get_run(self, run_id: UUID) -> Run:
        with self._connection() as conn:
            state = conn.scalar(_RUN_STATE, {"run_id": run_id})
        if state is None:
            raise RunNotFound(run_id)
        return Run.model_validate(state)

    def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        limit: int = 50,
        offset: int = 0,
        id_prefix: str | None = None,
        recipe: str | None = None,
        entity: str | None = None,
    ) -> list[Run]:
        """Newest first; ``id_prefix``: only runs whose id starts with those hex digits;
        ``recipe``, ``entity``: only that recipe's runs, that entity's."""
        query = select(runs.c.state).order_by(runs.c.created_at.desc(), runs.c.id.desc())
        query = _run_filters(query, status, id_prefix, recipe, entity)
        with self._connection() as conn:
            states = conn.scalars(query.limit(limit).offset(offset)).all()
        return [Run.model_validate(state) for state in states]

    def count_runs(
        self,
        *,
        status: RunStatus | None = None,
        id_prefix: str | None = None,
        recipe: str | None = None,
        entity: str | None = None,
    ) -> int:
        counted = select(func.count()).select_from(runs)
        query = _run_filters(counted, status, id_prefix, recipe, entity)
        with self._connection() as conn:
            return int(conn.scalar(query) or 0)

    def last_successes(self) -> dict[tuple[str, str | None], datetime]:
        """(recipe, entity or None) -> when its latest successful run finished (a finished run
        is not updated): one model each, a group's members each their own."""
        entity = run_entity
        query = (
            select(runs.c.recipe, entity, func.max(runs.c.updated_at))
            .where(runs.c.status == "succeeded")
            .group_by(runs.c.recipe, entity)
        )
        with self._connection() as conn:
            return {(recipe, name): at for recipe, name, at in conn.execute(query).all()}

    def list_due_deadlines(self, now: datetime, *, limit: int = 100) -> list[DeadlineExpired]:
        query = (
            select(runs.c.state)
            .where(runs.c.deadline <= now, runs.c.status.in_(ACTIVE_RUN_STATUSES))
            .order_by(runs.c.deadline)
            .limit(limit)
        )
        with self._connection() as conn:
            states = conn.scalars(query).all()
        due = []
        for state in states:
            stage = Run.model_validate(state).current_stage
            if stage is not None:
                due.append(DeadlineExpired(UUID(state["id"]), stage.stage, stage.attempt))
        return due

    def next_deadline(self) -> datetime | None:
        """The earliest deadline of an active run (the watchdog sleeps until it)."""
        query = select(func.min(runs.c.deadline)).where(runs.c.status.in_(ACTIVE_RUN_STATUSES))
        with self._connection() as conn:
            deadline: datetime | None = conn.scalar(query)
        return deadline

    # --- worker heartbeats ------------------------------------------------------------------

    def record_heartbeat(
        self, worker_id: str, worker: str, stage: str, seen: WorkerSeen, *, slots: int, busy: int
    ) -> None:
        """Keep the newest heartbeat of each worker process (an older one arriving late
        changes nothing)."""
        values = {
            "worker": worker,
            "stage": stage,
            "checked_at": seen.checked_at,
            "idle_since": seen.idle_since,
            "expires_at": seen.expires_at,
            "slots": slots,
            "busy": busy,
        }
        with self._connection() as conn, conn.begin():
            updated = conn.execute(
                update(worker_heartbeats)
                .where(
                    worker_heartbeats.c.worker_id == worker_id,
                    worker_heartbeats.c.checked_at <= seen.checked_at,
                )
                .values(**values)
            )
            if updated.rowcount:
                return
            exists = conn.scalar(
                select(worker_heartbeats.c.worker_id).where(
                    worker_heartbeats.c.worker_id == worker_id
                )
            )
            if exists is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(worker_heartbeats).values(worker_id=worker_id, **values)
                        )
                except IntegrityError:
                    pass  # another coordinator recorded this worker's heartbeat meanwhile

    def record_stage_start(self, stage: str, worker: str, at: datetime) -> bool:
        """Note that ``worker`` started a ``stage`` at ``at``; if it has never sent a heartbeat,
        remember it as a silent worker of its stage. Returns whether it is one."""
        with self._connection() as conn, conn.begin():
            return _note_stage_start(conn, StageStart(stage, worker, at), None)

    def silent_stages(self) -> set[str]:
        """The stages a worker without heartbeats was seen working for (until retention)."""
        with self._connection() as conn:
            return set(conn.scalars(select(silent_workers.c.stage).distinct()).all())

    def heartbeat_horizons(self) -> dict[str, datetime]:
        """Per stage, when its last live worker stops counting as live (past: already)."""
        query = select(worker_heartbeats.c.stage, func.max(worker_heartbeats.c.expires_at))
        with self._connection() as conn:
            rows = conn.execute(query.group_by(worker_heartbeats.c.stage)).all()
        return {stage: expires_at for stage, expires_at in rows}

    def list_queued_attempts(self, *, limit: int = 1000) -> list[tuple[Run, StageState]]:
        """Active runs whose current stage is queued, with that stage."""
        query = (
            select(runs.c.state)
            .where(runs.c.status.in_(ACTIVE_RUN_STATUSES))
            .order_by(runs.c.deadline)
            .limit(limit)
        )
        with self._connection() as conn:
            states = conn.scalars(query).all()
        found = []
        for state in states:
            run = Run.model_validate(state)
            stage = run.current_stage
            if stage is not None and stage.status == "queued":
                found.append((run, stage))
        return found

    def workers_by_stage(self, now: datetime) -> dict[str, tuple[WorkerSeen, ...]]:
        """The workers still live at ``now``, by stage."""
        query = select(worker_heartbeats).where(worker_heartbeats.c.expires_at > now)
        found: dict[str, list[WorkerSeen]] = {}
        with self._connection() as conn:
            for row in conn.execute(query).all():
                found.setdefault(row.stage, []).append(
                    WorkerSeen(row.worker, row.checked_at, row.idle_since, row.expires_at)
                )
        return {stage: tuple(seen) for stage, seen in found.items()}

    # --- retention -------------------------------------------------------------------------

    def prune(
        self, *, before: datetime, trigger_events_before: datetime, batch: int = 5000
    ) -> dict[str, int]:
        """Delete what no one needs any more, in short transactions of ``batch`` rows:
        published outbox rows and processed-message ids (the inbox) recorded before
        ``before``, heartbeats of workers gone since then (and silent workers last seen then),
        and blob events seen before
        ``trigger_events_before``. Unpublished outbox rows stay whatever their age. Returns
        the rows deleted per table."""
        targets = (
            (outbox, outbox.c.id, outbox.c.published_at < before),
            (
                processed_messages,
                processed_messages.c.message_id,
                processed_messages.c.processed_at < before,
            ),
            (
                trigger_events_seen,
                trigger_events_seen.c.key,
                trigger_events_seen.c.seen_at < trigger_events_before,
            ),
            (
                worker_heartbeats,
                worker_heartbeats.c.worker_id,
                worker_heartbeats.c.expires_at < before,
            ),
            (silent_workers, silent_workers.c.key, silent_workers.c.seen_at < before),
        )
        removed: dict[str, int] = {}
        for table, key, old in targets:
            removed[table.name] = 0
            while True:
                with self._connection() as conn, conn.begin():
                    doomed = select(key).where(old).limit(batch)
                    deleted = int(conn.execute(delete(table).where(key.in_(doomed))).rowcount or 0)
                removed[table.name] += deleted
                if deleted < batch:
                    break
        return removed

    def checkpoint(self) -> None:
        """SQLite: copy the write-ahead log into the database and truncate it (it only grows
        otherwise while readers keep it busy). PostgreSQL: see ``vacuum``."""
        if self._engine.dialect.name != "sqlite":
            return
        with self._connection() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")

    def vacuum(self, tables: Iterable[str]) -> list[str]:
        """PostgreSQL: ``VACUUM (ANALYZE)`` the store's ``tables`` (those retention just pruned),
        so the space of the deleted rows is reused and the planner's statistics follow the
        deletions now rather than whenever autovacuum's thresholds are met. Returns the tables
        vacuumed: none on SQLite, whose freed pages are reused anyway."""
        if self._engine.dialect.name != "postgresql":
            return []
        known = {table.name for table in metadata.sorted_tables}
        # Only names of our own tables ever reach the statement.
        names = [name for name in tables if name in known]
        if not names:
            return []
        quoted = ", ".join(self._qualified(name) for name in names)
        with self._engine.connect() as conn:
            # VACUUM cannot run inside a transaction block.
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql(f"VACUUM (ANALYZE) {quoted}")
        return names

    def _qualified(self, table: str) -> str:
        return f'"{self._schema}"."{table}"' if self._schema else f'"{table}"'

    def size_bytes(self) -> int:
        """What the store takes on disk: the SQLite files (database and WAL), or the
        PostgreSQL tables with their indexes and TOAST."""
        if self._engine.dialect.name == "sqlite":
            database = self._engine.url.database
            if not database or database == ":memory:":
                return 0
            files = [Path(database), Path(f"{database}-wal"), Path(f"{database}-shm")]
            return sum(path.stat().st_size for path in files if path.exists())
        with self._connection() as conn:
            total = 0
            for table in metadata.sorted_tables:
                name = self._qualified(table.name)
                total += int(
                    conn.scalar(
                        text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": name}
                    )
                    or 0
                )
            return total

    # --- outbox ----------------------------------------------------------------------------

    def pending_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        """Unpublished commands, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(_OUTBOX_PENDING, {"limit": limit}).all()
        return [
            OutboxMessage(
                id=row.id,
                topic=row.topic,
                message=OutgoingMessage(
                    body=row.body,
                    message_id=row.message_id,
                    correlation_id=row.correlation_id,
                    subject=row.subject,
                    application_properties=row.application_properties,
                    scheduled_enqueue_time=row.scheduled_enqueue_time,
                ),
            )
            for row in rows
        ]

    def mark_published(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        if not ids:
            return
        with self._connection() as conn, conn.begin():
            conn.execute(_OUTBOX_PUBLISHED, {"ids": ids, "published_at": utcnow()})

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailableError(f"run store unavailable: {exc}") from exc


class _VersionChanged(Exception):
    """The run's version changed between reading and writing it."""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _encoded(decision: Decision) -> Sequence[tuple[str, OutgoingMessage]]:
    return [
        (
            CONTROL_TOPIC
            if isinstance(scheduled.command, CancelStage)
            else command_topic(scheduled.command.stage),
            encode(scheduled.command, scheduled_enqueue_time=scheduled.not_before),
        )
        for scheduled in decision.commands
    ]


def _promotion_of(current: Run | None, new: Run) -> PromotionRecord | None:
    """The promotion ``new`` records: its tag stage succeeded just now, having promoted."""
    tag = new.stage("tag")
    if tag.status != "succeeded" or (
        current is not None and current.stage("tag").status == "succeeded"
    ):
        return None
    model = new.model
    if model is None or not model.champion or not model.name or not model.version:
        return None
    return PromotionRecord(
        model_name=model.name,
        version=model.version,
        promoted_at=tag.finished_at or new.updated_at,
        run_id=new.id,
        actor=None,
        reason=model.reason,
        previous_version=None,
    )


def _outbox_row(topic_and_message: tuple[str, OutgoingMessage], now: datetime) -> dict[str, Any]:
    topic, message = topic_and_message
    return {
        "topic": topic,
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "subject": message.subject,
        "body": message.body,
        "application_properties": dict(message.application_properties),
        "scheduled_enqueue_time": message.scheduled_enqueue_time,
        "created_at": now,
        "published_at": None,
    }


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
