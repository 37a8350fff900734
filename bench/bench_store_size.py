"""Run store size per 1,000 runs, before and after retention (``RunStore.prune`` and the
SQLite WAL checkpoint), on SQLite and, when reachable, PostgreSQL.

    .venv/bin/python bench/bench_store_size.py [--runs 1000] [--postgres URL] [--json out.json]

Each run goes through the five stages as the coordinator records them: its commands in the
outbox (published), a StageStarted and a StageSucceeded per stage through the inbox. Then
everything but the runs is past its horizon and pruned.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text

from coordinator.domain import CoordinatorInput, Decision, Policy, Run, StartRun, decide
from coordinator.store import RunStore, metadata
from shared.messages import STAGES, StageStarted, StageSucceeded, utcnow

POLICY = Policy()


def deciding(message: CoordinatorInput) -> Callable[[Run | None], Decision]:
    return lambda run: decide(run, message, now=utcnow(), policy=POLICY)


def fill(store: RunStore, runs: int) -> None:
    for _ in range(runs):
        run_id = uuid.uuid4()
        store.apply(
            run_id,
            deciding(
                StartRun(
                    run_id,
                    "state_identifier",
                    "datasets/state-identifier/sample",
                    {"n_clusters": 3, "features": ["temperature", "vibration"]},
                )
            ),
        )
        for stage in STAGES:
            started = StageStarted(
                correlation_id=run_id, stage=stage, attempt=1, worker=f"{stage}@host"
            )
            store.apply(run_id, deciding(started), inbox_message_id=started.message_id)
            done = StageSucceeded(
                correlation_id=run_id,
                stage=stage,
                attempt=1,
                outputs={stage: f"artifacts/cache/{stage}/{uuid.uuid4().hex}{uuid.uuid4().hex}"},
                metrics={"silhouette": 0.61} if stage == "train" else {},
                details={"model_name": "state_identifier", "model_version": 7}
                if stage == "register"
                else {},
                duration_s=1.0,
            )
            store.apply(run_id, deciding(done), inbox_message_id=done.message_id)
        store.mark_published(row.id for row in store.pending_outbox(100))


def row_counts(store: RunStore) -> dict[str, int]:
    with store._engine.connect() as conn:
        return {
            table.name: int(conn.scalar(select(func.count()).select_from(table)) or 0)
            for table in metadata.sorted_tables
        }


def sqlite_live_bytes(store: RunStore) -> int:
    """Pages in use (the file keeps its freed pages for reuse)."""
    with store._engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
        free = conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
        size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
    return int((pages - free) * size)


def measure(store: RunStore, runs: int, kind: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    fill(store, runs)
    filled_s = time.perf_counter() - t0
    result: dict[str, Any] = {
        "store": kind,
        "runs": runs,
        "fill_s": round(filled_s, 1),
        "rows_before": row_counts(store),
        "bytes_before": store.size_bytes(),
    }
    if kind == "sqlite":
        result["live_bytes_before"] = sqlite_live_bytes(store)
    later = utcnow() + timedelta(days=30)
    t0 = time.perf_counter()
    result["pruned"] = store.prune(before=later, trigger_events_before=later)
    store.checkpoint()
    result["prune_s"] = round(time.perf_counter() - t0, 2)
    result["rows_after"] = row_counts(store)
    result["bytes_after"] = store.size_bytes()
    if kind == "sqlite":
        result["live_bytes_after"] = sqlite_live_bytes(store)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--postgres", default="postgresql+psycopg://root@127.0.0.1:5432/test")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore.from_url(f"sqlite:///{Path(tmp) / 'coordinator.sqlite'}")
        store.create_tables()
        results.append(measure(store, args.runs, "sqlite"))
        store.close()
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.postgres)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        print(f"PostgreSQL skipped: {exc}")
    else:
        store = RunStore.from_url(args.postgres, schema=schema)
        store.create_tables()
        try:
            results.append(measure(store, args.runs, "postgresql"))
        finally:
            store.close()
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()
    for result in results:
        print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
