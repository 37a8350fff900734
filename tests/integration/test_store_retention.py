"""Run store retention on SQLite and PostgreSQL: the outbox, the inbox of processed messages,
the blob events seen and the heartbeats of gone workers are pruned past their horizon, what
is still needed stays, SQLite's write-ahead log is truncated and PostgreSQL's pruned tables are
vacuumed and analyzed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from coordinator.domain import Policy, WorkerSeen
from coordinator.service import Coordinator, StoreRetention, TriggerPolicy
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore, outbox, processed_messages
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import StageStarted, utcnow
from shared.topology import build_topology
from tests.integration.test_coordinator_store import create, deciding, hit, store  # noqa: F401
from tests.recipe_fixtures import echo_recipe, only
from tests.waiting import wait_until


def rows(db: RunStore, table: object) -> int:
    with db._engine.connect() as conn:
        return len(conn.execute(table.select()).all())  # type: ignore[attr-defined]


def fill(db: RunStore, runs: int) -> None:
    """``runs`` runs with their first command published and a stage event processed."""
    for _ in range(runs):
        run = create(db)
        started = StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")
        db.apply(run.id, deciding(started), inbox_message_id=started.message_id)
    db.mark_published(row.id for row in db.pending_outbox(1000))


def test_bookkeeping_past_the_horizon_is_pruned_and_the_rest_kept(store: RunStore) -> None:  # noqa: F811
    fill(store, 7)
    unpublished = create(store)  # its command is not out yet: kept however old
    now = utcnow()
    gone = WorkerSeen("split@old", now, None, now - timedelta(days=3))
    live = WorkerSeen("split@new", now, None, now + timedelta(minutes=1))
    store.record_heartbeat("old", gone.worker, "split", gone, slots=1, busy=0)
    store.record_heartbeat("new", live.worker, "split", live, slots=1, busy=0)
    store.record_trigger_hits([hit("seen")], now - timedelta(days=10))
    store.record_trigger_hits([hit("recent", etag="e2")], now)
    assert store.record_stage_start("train", "train@v1", now - timedelta(days=1))

    # Nothing is old enough yet.
    nothing = store.prune(
        before=now - timedelta(days=2), trigger_events_before=now - timedelta(days=7), batch=3
    )
    assert nothing == {
        "outbox": 0,
        "processed_messages": 0,
        "trigger_events_seen": 2,  # the event seen 10 days ago: its id and its blob+etag
        "worker_heartbeats": 1,
        "silent_workers": 0,
    }
    assert store.workers_by_stage(now) == {"split": (live,)}
    assert store.silent_stages() == {"train"}

    later = now + timedelta(days=3)
    removed = store.prune(before=later, trigger_events_before=now - timedelta(days=7), batch=3)

    assert removed["outbox"] == 7, "published rows only, in batches of 3"
    assert removed["processed_messages"] == 7
    assert removed["silent_workers"] == 1
    assert store.silent_stages() == set()
    assert rows(store, outbox) == 1
    [pending] = store.pending_outbox()
    assert pending.message.correlation_id == str(unpublished.id)
    assert rows(store, processed_messages) == 0
    # The recent blob event is still recognised.
    assert store.record_trigger_hits([hit("recent", etag="e2")], now) == [False]
    store.checkpoint()  # a no-op on PostgreSQL


def test_a_checkpoint_truncates_the_sqlite_write_ahead_log(tmp_path: Path) -> None:
    db = RunStore.from_url(f"sqlite:///{tmp_path / 'runs.sqlite'}")
    db.create_tables()
    try:
        fill(db, 50)
        wal = tmp_path / "runs.sqlite-wal"
        assert wal.stat().st_size > 0

        db.prune(before=utcnow() + timedelta(days=3), trigger_events_before=utcnow())
        db.checkpoint()

        assert wal.stat().st_size == 0
        assert db.count_runs() == 50
    finally:
        db.close()


def test_the_coordinator_prunes_on_its_schedule(tmp_path: Path) -> None:
    db = RunStore.from_url(f"sqlite:///{tmp_path / 'runs.sqlite'}")
    db.create_tables()
    blobs = LocalBlobStore(tmp_path / "blobs")
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())
    clock_offset = [timedelta(0)]
    coordinator = Coordinator(
        bus=bus,
        blobs=blobs,
        store=db,
        recipes=only(echo_recipe),
        policy=Policy(),
        triggers=TriggerPolicy(dedup_retention_s=7 * 24 * 3600.0),
        store_retention=StoreRetention(horizon_s=3600.0, interval_s=3600.0),
        clock=lambda: utcnow() + clock_offset[0],
    )
    try:
        fill(db, 3)
        assert coordinator.store_retention_tick() == {
            "outbox": 0,
            "processed_messages": 0,
            "trigger_events_seen": 0,
            "worker_heartbeats": 0,
            "silent_workers": 0,
        }, "the first tick prunes at once; nothing is old yet"
        clock_offset[0] = timedelta(hours=2)
        assert coordinator.store_retention_tick() == {}, "not again within the interval"
        assert coordinator.prune_store()["outbox"] == 3
        assert rows(db, processed_messages) == 0
    finally:
        coordinator.close()


def _maintained(db: RunStore, tables: list[str]) -> dict[str, bool]:
    """Per table: whether PostgreSQL recorded a VACUUM and an ANALYZE of it (not autovacuum)."""
    query = text(
        "SELECT relname, last_vacuum IS NOT NULL AND last_analyze IS NOT NULL "
        "FROM pg_stat_user_tables WHERE schemaname = :schema AND relname = ANY(:tables)"
    )
    with db._engine.connect() as conn:
        rows = conn.execute(query, {"schema": db._schema, "tables": tables}).all()
    return {name: bool(done) for name, done in rows}


def test_retention_vacuums_and_analyzes_the_postgresql_tables_it_pruned(
    store: RunStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    coordinator = Coordinator(
        bus=SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology()),
        blobs=LocalBlobStore(tmp_path / "blobs"),
        store=store,
        recipes=only(echo_recipe),
        policy=Policy(),
        store_retention=StoreRetention(horizon_s=3600.0),
        clock=lambda: utcnow() + timedelta(hours=2),
    )
    try:
        fill(store, 3)
        removed = coordinator.prune_store()
        pruned = sorted(table for table, count in removed.items() if count)
        assert pruned == ["outbox", "processed_messages"]
        # Names that are not the store's tables never reach a statement.
        assert store.vacuum(["runs; DROP TABLE runs", "nonsense"]) == []
        if store._engine.dialect.name == "sqlite":
            assert store.vacuum(pruned) == [], "nothing to do on SQLite"
            return
        everything = [*pruned, "runs"]
        wait_until(
            lambda: (
                _maintained(store, everything) == {**dict.fromkeys(pruned, True), "runs": False}
            ),
            "PostgreSQL to record the VACUUM and ANALYZE of the pruned tables only",
        )
        assert store.count_runs() == 3
    finally:
        coordinator.close()


@pytest.mark.parametrize("name", ["store_retention_s", "trigger_dedup_retention_s"])
def test_a_horizon_shorter_than_the_duplicate_detection_window_is_refused(
    name: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="duplicate-detection window"):
        CoordinatorSettings.model_validate({"state_dir": tmp_path, name: 599.0})
    settings = CoordinatorSettings.model_validate({"state_dir": tmp_path, name: 600.0})
    assert getattr(settings, name) == 600.0
    assert settings.store_retention.interval_s == 3600.0
