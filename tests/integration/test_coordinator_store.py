"""The run store suite, run on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from coordinator import store as store_module
from coordinator.domain import (
    CancelRun,
    CoordinatorInput,
    DeadlineExpired,
    Decision,
    Policy,
    Run,
    RunNotFound,
    StartRun,
    WorkerSeen,
    decide,
)
from coordinator.store import (
    ConcurrencyConflict,
    PendingBurst,
    RunStore,
    StageStart,
    TriggerHit,
)
from shared.messages import StageFailed, StageStarted, StageSucceeded, encode

POSTGRES_URL = os.environ.get(
    "RETRAINER_TEST_POSTGRES_URL", "postgresql+psycopg://root@127.0.0.1:5432/test"
)
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(queue_timeout_s=60.0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunStore]:
    if request.param == "sqlite":
        sqlite_store = RunStore.from_url(f"sqlite:///{tmp_path / 'runs.sqlite'}")
        sqlite_store.create_tables()
        yield sqlite_store
        sqlite_store.close()
        return
    # A schema of its own per test: other suites may share the database.
    schema = f"retrainer_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    postgres_store = RunStore.from_url(POSTGRES_URL, schema=schema)
    try:
        postgres_store.create_tables()
        yield postgres_store
    finally:
        postgres_store.close()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def start(run_id: UUID) -> StartRun:
    return StartRun(run_id, "state_identifier", "raw/set1", {"n_clusters": 3})


def deciding(message: CoordinatorInput, now: datetime = T0) -> Callable[[Run | None], Decision]:
    def fn(run: Run | None) -> Decision:
        return decide(run, message, now=now, policy=POLICY)

    return fn


def create(store: RunStore, now: datetime = T0) -> Run:
    run_id = uuid4()
    decision = store.apply(run_id, deciding(start(run_id), now))
    assert decision is not None
    return decision.run


def test_apply_saves_the_run_and_its_command_in_the_outbox(store: RunStore) -> None:
    run_id = uuid4()

    decision = store.apply(run_id, deciding(start(run_id)))

    assert decision is not None
    assert store.get_run(run_id) == decision.run
    [pending] = store.pending_outbox()
    [scheduled] = decision.commands
    assert pending.topic == "stage-aggregation"
    assert pending.message == encode(scheduled.command)


def test_scheduled_commands_keep_their_enqueue_time(store: RunStore) -> None:
    run = create(store)
    store.mark_published(p.id for p in store.pending_outbox())
    failure = StageFailed(
        correlation_id=run.id,
        stage="aggregation",
        attempt=1,
        error="disk hiccup",
        error_type="OSError",
        retryable=True,
    )

    decision = store.apply(run.id, deciding(failure, T0 + timedelta(seconds=5)))

    assert decision is not None
    [pending] = store.pending_outbox()
    assert pending.message.message_id == f"{run.id}:aggregation:2"
    assert pending.message.scheduled_enqueue_time == T0 + timedelta(seconds=5 + 2)


def test_a_stage_start_is_recorded_in_the_transaction_that_applies_its_event(
    store: RunStore,
) -> None:
    run = create(store)
    seen = WorkerSeen("split@v2", T0, None, T0 + timedelta(seconds=31))
    store.record_heartbeat("w1", seen.worker, "split", seen, slots=1, busy=0)
    event = StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")

    def applying(stage_start: StageStart, message_id: str = event.message_id) -> Decision | None:
        return store.apply(
            run.id, deciding(event), inbox_message_id=message_id, stage_start=stage_start
        )

    assert applying(StageStart("aggregation", "aggregation@v1", T0)) is not None
    assert store.silent_stages() == {"aggregation"}
    # A worker with a heartbeat is not a silent one.
    assert applying(StageStart("split", "split@v2", T0), str(uuid4())) is not None
    assert store.silent_stages() == {"aggregation"}
    # A message processed before still records its worker (as a redelivery always did).
    assert applying(StageStart("train", "train@v1", T0)) is None
    assert store.silent_stages() == {"aggregation", "train"}
    # Seen again later: kept past a retention that would have taken the first sighting.
    later = T0 + timedelta(hours=2)
    assert applying(StageStart("aggregation", "aggregation@v1", later), str(uuid4())) is not None
    assert applying(StageStart("aggregation", "aggregation@v1", T0), str(uuid4())) is not None
    removed = store.prune(before=T0 + timedelta(hours=1), trigger_events_before=T0)
    assert removed["silent_workers"] == 1  # train's only
    assert store.silent_stages() == {"aggregation"}
    # Not recorded when the decision is not saved: the caller records it on its own then.
    with pytest.raises(RunNotFound):
        store.apply(
            uuid4(),
            deciding(event),
            inbox_message_id=str(uuid4()),
            stage_start=StageStart("tag", "tag@v1", T0),
        )
    assert store.silent_stages() == {"aggregation"}


def test_a_stage_start_that_cannot_be_recorded_does_not_fail_its_event(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = create(store)
    # The bookkeeping's write fails in the database (aborting the transaction on PostgreSQL,
    # but for its savepoint).
    failing = text("UPDATE silent_workers SET seen_at = :at WHERE no_such_column = :silent_key")
    monkeypatch.setattr(store_module, "_SILENT_SEEN", failing)
    event = StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")

    decision = store.apply(
        run.id,
        deciding(event),
        inbox_message_id=event.message_id,
        stage_start=StageStart("aggregation", "aggregation@v1", T0),
    )

    assert decision is not None
    assert store.get_run(run.id).stage("aggregation").status == "running"
    assert store.silent_stages() == set()


def test_mark_published_takes_rows_off_the_pending_list(store: RunStore) -> None:
    first, second = create(store), create(store)
    pending = store.pending_outbox()
    assert [p.message.correlation_id for p in pending] == [str(first.id), str(second.id)]

    store.mark_published([pending[0].id])

    assert [p.message.correlation_id for p in store.pending_outbox()] == [str(second.id)]
    assert store.pending_outbox(limit=0) == []


def test_a_processed_message_is_not_applied_twice(store: RunStore) -> None:
    run = create(store)
    event = StageStarted(correlation_id=run.id, stage="aggregation", attempt=1, worker="w")
    calls = []

    def counting(current: Run | None) -> Decision:
        calls.append(current)
        return deciding(event)(current)

    first = store.apply(run.id, counting, inbox_message_id=event.message_id)
    second = store.apply(run.id, counting, inbox_message_id=event.message_id)

    assert first is not None and first.run.status == "running"
    assert second is None
    assert len(calls) == 1


def test_an_ignored_event_changes_nothing_but_is_remembered(store: RunStore) -> None:
    run = create(store)
    stale = StageSucceeded(correlation_id=run.id, stage="train", attempt=1)

    decision = store.apply(run.id, deciding(stale), inbox_message_id=stale.message_id)

    assert decision is not None and decision.commands == []
    assert store.get_run(run.id) == run
    assert store.apply(run.id, deciding(stale), inbox_message_id=stale.message_id) is None


def test_a_failing_decision_writes_nothing(store: RunStore) -> None:
    missing = uuid4()
    event = StageStarted(correlation_id=missing, stage="aggregation", attempt=1, worker="w")

    with pytest.raises(RunNotFound):
        store.apply(missing, deciding(event), inbox_message_id=event.message_id)

    with pytest.raises(RunNotFound):
        store.get_run(missing)
    assert store.pending_outbox() == []
    # The inbox marker was rolled back with the rest, so a redelivery is decided again.
    with pytest.raises(RunNotFound):
        store.apply(missing, deciding(event), inbox_message_id=event.message_id)


def test_a_concurrent_update_is_detected_and_the_decision_taken_again(store: RunStore) -> None:
    run = create(store)
    seen: list[str] = []

    def cancel_after_a_rival_starts_the_stage(current: Run | None) -> Decision:
        assert current is not None
        seen.append(current.status)
        if len(seen) == 1:
            started = StageStarted(
                correlation_id=run.id, stage="aggregation", attempt=1, worker="w"
            )
            store.apply(run.id, deciding(started))
        return decide(current, CancelRun(run.id), now=T0, policy=POLICY)

    store.apply(run.id, cancel_after_a_rival_starts_the_stage)

    assert seen == ["queued", "running"]
    final = store.get_run(run.id)
    assert final.status == "cancelled"
    assert final.stage("aggregation").worker == "w"


def test_concurrent_writers_lose_no_update(store: RunStore) -> None:
    run = create(store)
    writers, increments = 4, 10
    errors: list[BaseException] = []

    def bump(current: Run | None) -> Decision:
        assert current is not None
        count = int(current.params.get("count", 0)) + 1
        return Decision(current.model_copy(update={"params": {**current.params, "count": count}}))

    def writer() -> None:
        try:
            for _ in range(increments):
                # A writer that keeps losing the race on a busy machine gets ConcurrencyConflict
                # (retryable, as its callers do): the update is retried, never lost.
                while True:
                    try:
                        store.apply(run.id, bump)
                        break
                    except ConcurrencyConflict:
                        continue
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert store.get_run(run.id).params["count"] == writers * increments


def test_list_runs_is_newest_first_with_filters_and_paging(store: RunStore) -> None:
    runs = [create(store, T0 + timedelta(minutes=i)) for i in range(4)]
    cancelled = store.apply(runs[1].id, deciding(CancelRun(runs[1].id)))
    assert cancelled is not None

    assert [r.id for r in store.list_runs()] == [r.id for r in reversed(runs)]
    assert [r.id for r in store.list_runs(limit=2, offset=1)] == [runs[2].id, runs[1].id]
    assert [r.id for r in store.list_runs(status="cancelled")] == [runs[1].id]
    assert store.list_runs(status="succeeded") == []
    assert store.count_runs() == 4
    assert store.count_runs(status="queued") == 3


def test_due_deadlines_name_the_current_attempt_of_active_runs_only(store: RunStore) -> None:
    due = create(store, T0)
    later = create(store, T0 + timedelta(seconds=30))
    finished = create(store, T0)
    store.apply(finished.id, deciding(CancelRun(finished.id)))

    assert store.list_due_deadlines(T0 + timedelta(seconds=59)) == []
    assert store.list_due_deadlines(T0 + timedelta(seconds=60)) == [
        DeadlineExpired(due.id, "aggregation", 1)
    ]
    assert {d.run_id for d in store.list_due_deadlines(T0 + timedelta(hours=1))} == {
        due.id,
        later.id,
    }


def test_times_come_back_aware_and_in_utc(store: RunStore) -> None:
    run = create(store, datetime(2025, 3, 1, 13, 0, tzinfo=UTC))

    [pending] = store.pending_outbox()

    assert store.get_run(run.id).created_at == datetime(2025, 3, 1, 13, 0, tzinfo=UTC)
    assert store.get_run(run.id).created_at.tzinfo is not None
    assert pending.message.scheduled_enqueue_time is None


def test_get_run_of_an_unknown_id_raises_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound):
        store.get_run(uuid4())


def test_ping_reaches_the_database(store: RunStore) -> None:
    store.ping()


# --- blob triggers -----------------------------------------------------------------------


def hit(
    event_id: str, blob: str = "datasets/d/2025/a.csv", etag: str = "e1", **kw: Any
) -> TriggerHit:
    fields: dict[str, Any] = {
        "recipe": "state_identifier",
        "data": "datasets/d/2025",
        "params": {"n_clusters": 3},
        "quiet_s": 5.0,
        "max_wait_s": 60.0,
        "rule": "datasets/d/* -> state_identifier (debounce)",
        **kw,
    }
    return TriggerHit(event_id=event_id, blob_name=blob, etag=etag, **fields)


def start_burst(burst: PendingBurst, now: datetime = T0) -> Callable[[Run | None], Decision]:
    def fn(run: Run | None) -> Decision:
        assert run is None
        message = StartRun(uuid4(), burst.recipe, burst.data, burst.params, "blob", burst.details)
        return decide(run, message, now=now, policy=POLICY)

    return fn


def test_a_seen_event_id_or_blob_etag_pair_does_not_count_again(store: RunStore) -> None:
    assert store.record_trigger_hits([hit("e-1")], T0) == [True]

    again = [
        hit("e-1"),  # the same event redelivered
        hit("e-2"),  # another event about the same write (blob and etag)
        hit("e-3", etag="e2"),  # a new write of the same blob
        hit("e-3", etag="e2"),  # ... twice in one batch
    ]
    assert store.record_trigger_hits(again, T0) == [False, False, True, False]
    [burst] = store.pending_bursts()
    assert burst.details["events"] == 2


def test_each_hit_extends_the_quiet_window_up_to_the_max_wait(store: RunStore) -> None:
    store.record_trigger_hits([hit("a", "datasets/d/2025/a.csv")], T0)
    store.record_trigger_hits([hit("b", "datasets/d/2025/b.csv")], T0 + timedelta(seconds=3))
    [burst] = store.pending_bursts()
    assert burst.due_at == T0 + timedelta(seconds=8)
    assert burst.details["first"]["blob"] == "datasets/d/2025/a.csv"
    assert burst.details["last"]["blob"] == "datasets/d/2025/b.csv"
    assert burst.details["rule"] == "datasets/d/* -> state_identifier (debounce)"

    store.record_trigger_hits([hit("c", "datasets/d/2025/c.csv")], T0 + timedelta(seconds=58))
    [burst] = store.pending_bursts()
    assert burst.due_at == T0 + timedelta(seconds=60)  # capped: first hit + max_wait_s
    assert store.pending_bursts(due_by=T0 + timedelta(seconds=59)) == []
    assert store.pending_bursts(due_by=T0 + timedelta(seconds=60)) == [burst]


def test_different_runs_have_different_bursts_and_a_marker_is_due_at_once(
    store: RunStore,
) -> None:
    store.record_trigger_hits(
        [
            hit("a", "datasets/d/2025/a.csv"),
            hit("b", "datasets/d/2026/b.csv", data="datasets/d/2026"),
            hit("c", "datasets/d/2025/c.csv", params={"n_clusters": 4}),
            hit("m", "labels/x/_READY", data="labels/x", quiet_s=0.0),
        ],
        T0,
    )

    bursts = store.pending_bursts()
    assert len(bursts) == 4
    assert [b.data for b in store.pending_bursts(due_by=T0)] == ["labels/x"]


def test_firing_a_burst_starts_its_run_and_removes_it_in_one_transaction(
    store: RunStore,
) -> None:
    store.record_trigger_hits([hit("a"), hit("b", "datasets/d/2025/b.csv")], T0)
    [burst] = store.pending_bursts()
    run_id = uuid4()

    decision = store.fire_burst(burst, run_id, start_burst(burst))

    assert decision is not None
    assert store.pending_bursts() == []
    run = store.get_run(decision.run.id)
    assert (run.trigger, run.data, run.params) == ("blob", "datasets/d/2025", {"n_clusters": 3})
    assert run.trigger_details["events"] == 2
    [pending] = store.pending_outbox()
    assert pending.topic == "stage-aggregation"
    # Fired already (here, or by another coordinator): nothing more starts.
    assert store.fire_burst(burst, uuid4(), start_burst(burst)) is None
    assert store.count_runs() == 1


def test_a_burst_that_changed_since_it_was_read_is_not_fired(store: RunStore) -> None:
    store.record_trigger_hits([hit("a")], T0)
    [stale] = store.pending_bursts()
    store.record_trigger_hits([hit("b", "datasets/d/2025/b.csv")], T0 + timedelta(seconds=4))

    assert store.fire_burst(stale, uuid4(), start_burst(stale)) is None
    assert store.drop_burst(stale) is False
    assert store.count_runs() == 0
    [current] = store.pending_bursts()
    assert current.details["events"] == 2
    assert store.drop_burst(current) is True
    assert store.pending_bursts() == []


def test_old_seen_events_are_pruned(store: RunStore) -> None:
    store.record_trigger_hits([hit("old")], T0)
    store.record_trigger_hits([hit("new", etag="e2")], T0 + timedelta(days=2))

    assert store.prune_trigger_events(T0 + timedelta(days=1)) == 2  # its id and its blob+etag

    assert store.record_trigger_hits([hit("old")], T0 + timedelta(days=3)) == [True]
    assert store.record_trigger_hits([hit("new", etag="e2")], T0 + timedelta(days=3)) == [False]


def test_concurrent_deliveries_of_one_event_count_it_once(store: RunStore) -> None:
    results: list[bool] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def deliver(i: int) -> None:
        try:
            barrier.wait()
            results.extend(
                store.record_trigger_hits([hit("same"), hit(f"own-{i}", etag=f"{i}")], T0)
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(results) == [False] * 3 + [True] * 5
    [burst] = store.pending_bursts()
    assert burst.details["events"] == 5


def test_the_last_success_of_each_recipe_and_entity(store: RunStore) -> None:
    """What the "no successful run for N days" gauge reports: one age per model, a run
    group's members each their own; a later failure or an active run is no success."""
    finished: dict[tuple[str, str | None], datetime] = {}
    for recipe, entity, age_h, status in [
        ("state_identifier", None, 50, "succeeded"),
        ("state_identifier", None, 30, "succeeded"),
        ("state_identifier", None, 1, "failed"),
        ("species_distribution", "cygnus-olor", 40, "succeeded"),
        ("species_distribution", "anser-anser", 20, "succeeded"),
        ("species_distribution", "anser-anser", 10, "succeeded"),
        ("image_classification", None, 5, "running"),
    ]:
        at = T0 - timedelta(hours=age_h)
        run_id = uuid4()
        begun = decide(
            None, StartRun(run_id, recipe, "raw/x", {}, entity=entity), now=at, policy=POLICY
        )
        ended = Decision(begun.run.model_copy(update={"status": status, "updated_at": at}))
        store.apply(run_id, _returning(ended))
        if status == "succeeded":
            finished[recipe, entity] = at
    assert store.last_successes() == finished
    assert set(finished) == {
        ("state_identifier", None),
        ("species_distribution", "cygnus-olor"),
        ("species_distribution", "anser-anser"),
    }


def _returning(decision: Decision) -> Callable[[Run | None], Decision]:
    return lambda _run: decision


def test_runs_are_listed_and_counted_by_recipe_and_entity(store: RunStore) -> None:
    made: dict[tuple[str, str | None], UUID] = {}
    for recipe, entity in [
        ("state_identifier", None),
        ("species_distribution", "cygnus-olor"),
        ("species_distribution", "anser-anser"),
        ("text_classification", "cygnus-olor"),
    ]:
        run_id = uuid4()
        store.apply(run_id, deciding(StartRun(run_id, recipe, "raw/set1", {}, entity=entity)))
        made[recipe, entity] = run_id

    def ids(**filters: Any) -> set[UUID]:
        found = {run.id for run in store.list_runs(**filters)}
        assert store.count_runs(**filters) == len(found)
        return found

    assert ids(recipe="species_distribution") == {
        made["species_distribution", "cygnus-olor"],
        made["species_distribution", "anser-anser"],
    }
    assert ids(entity="cygnus-olor") == {
        made["species_distribution", "cygnus-olor"],
        made["text_classification", "cygnus-olor"],
    }
    assert ids(recipe="species_distribution", entity="cygnus-olor") == {
        made["species_distribution", "cygnus-olor"]
    }
    assert ids(entity="cygnus-olor", status="succeeded") == set()
    assert len(ids()) == 4
