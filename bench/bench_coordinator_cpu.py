"""The coordinator's CPU per run, alone: runs driven through every stage by scripted workers.

    .venv/bin/python bench/bench_coordinator_cpu.py [--runs 200] [--rounds 3]
        [--baseline-tree /path/to/other/checkout]

One process holds a coordinator (SQLite run store, SQLite bus, local blobs: the embedded
stack's adapters) and scripted workers that answer every command at once with a started and a
succeeded event. The coordinator's own calls (``start_run`` as ``POST /runs`` makes it,
``consume_events``, ``relay_outbox``) are timed by this thread's CPU clock, so the workers'
share and the machine's other load stay out of the figure. Also counted: SQL statements and
commits on the run store and the bus per run. With ``--baseline-tree``, each round runs that
checkout's code (a subprocess with its ``PYTHONPATH``) and this one's, alternating.
Target: <= 30 ms of coordinator CPU per run (issue 17).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

TARGET_MS = 30.0
HERE = Path(__file__).resolve().parents[1]


def _count_statements(counting: list[bool]) -> Counter[str]:
    """Counts, by first word, every statement run while ``counting[0]`` on the SQLite
    connections opened from now on."""
    counts: Counter[str] = Counter()
    connect = sqlite3.connect

    def count(sql: str) -> None:
        if counting[0]:
            counts.update([sql.split(None, 1)[0].upper()])

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(count)
        return conn

    sqlite3.connect = traced  # type: ignore[assignment]
    sqlite3.dbapi2.connect = traced  # type: ignore[assignment]
    return counts


def measure(runs: int) -> dict[str, float]:
    """One round in this process: ``runs`` runs from start to succeeded."""
    # Only the coordinator's own calls count (the scripted workers share the process).
    counting = [False]
    counts = _count_statements(counting)
    from coordinator.domain import Policy
    from coordinator.service import Coordinator
    from coordinator.store import RunStore
    from shared.blobs.local import LocalBlobStore
    from shared.bus.sqlite import SqliteMessageBus
    from shared.messages import (
        STAGES,
        RunStage,
        Stage,
        StageStarted,
        StageSucceeded,
        WorkerHeartbeat,
        decode,
        encode,
    )
    from shared.recipe_registry import get_recipe
    from shared.topology import EVENTS_TOPIC, WORKER_SUBSCRIPTION, build_topology, command_topic

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        blobs = LocalBlobStore(root / "blobs")
        blobs.upload_blob("datasets/bench/raw/part-1.csv", b"timestamp,a\n1,2\n")
        topology = build_topology(lock_duration_s=60.0)
        store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
        store.create_tables()
        coordinator = Coordinator(
            bus=SqliteMessageBus(root / "bus.sqlite", topology=topology),
            blobs=blobs,
            store=store,
            recipes=get_recipe,
            policy=Policy(),
        )
        workers = SqliteMessageBus(root / "bus.sqlite", topology=topology)
        cpu = 0.0

        def timed(fn: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal cpu
            counting[0] = True
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                cpu += time.thread_time() - t0
                counting[0] = False

        def drain_events() -> None:
            while timed(coordinator.consume_events, max_messages=10, max_wait_s=0):
                pass
            while timed(coordinator.relay_outbox):
                pass

        def answer(stage: Stage) -> int:
            answered = 0
            while True:
                received = workers.receive_messages(
                    command_topic(stage), WORKER_SUBSCRIPTION, max_message_count=50, max_wait_time=0
                )
                if not received:
                    return answered
                events = []
                for message in received:
                    command = decode(message.body, message.application_properties)
                    assert isinstance(command, RunStage)
                    run_id, attempt = command.correlation_id, command.attempt
                    started = StageStarted(
                        correlation_id=run_id, stage=stage, attempt=attempt, worker="bench"
                    )
                    succeeded = StageSucceeded(
                        correlation_id=run_id,
                        stage=stage,
                        attempt=attempt,
                        outputs={stage: f"stages/{run_id}/{stage}"},
                        details={"model_version": "1"} if stage == "register" else {},
                    )
                    events += [encode(started), encode(succeeded)]
                    workers.complete_message(message)
                workers.send_messages(EVENTS_TOPIC, events)
                answered += len(received)

        params = {"n_clusters": 3}
        # Untimed: each stage's worker says it is alive, as real workers do (a worker that
        # never sent a heartbeat is bookkept as silent on every start).
        workers.send_messages(
            EVENTS_TOPIC,
            [
                encode(
                    WorkerHeartbeat(
                        correlation_id=uuid.uuid4(),
                        worker="bench",
                        stage=stage,
                        interval_s=3600.0,
                        slots=1,
                        busy=0,
                    )
                )
                for stage in STAGES
            ],
        )
        # Untimed: first-call paths (imports, statement caches, recipe lookup).
        coordinator.start_run("state_identifier", "datasets/bench/raw", params)
        drain_events()
        for stage in STAGES:
            answer(stage)
            drain_events()
        cpu = 0.0
        counts.clear()
        for _ in range(runs):
            timed(coordinator.start_run, "state_identifier", "datasets/bench/raw", params)
        drain_events()
        for stage in STAGES:
            while answer(stage):
                drain_events()
            drain_events()
        done = coordinator.store.count_runs(status="succeeded")
        coordinator.close()
        workers.close()
    if done != runs + 1:
        raise SystemExit(f"only {done} of {runs + 1} runs succeeded")
    return {
        "cpu_ms_per_run": cpu / runs * 1e3,
        "statements_per_run": sum(counts.values()) / runs,
        "commits_per_run": counts["COMMIT"] / runs,
    }


def round_in(tree: Path, runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--one-round", str(runs)],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-tree", type=Path)
    parser.add_argument("--one-round", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_round:
        print(json.dumps(measure(args.one_round)))
        return
    trees = {"this tree": HERE}
    if args.baseline_tree:
        trees = {"baseline": args.baseline_tree.resolve(), **trees}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            results[name].append(round_in(tree, args.runs))
            print(name, results[name][-1], flush=True)
    load = os.getloadavg()
    print(
        f"\n{args.runs} runs x {args.rounds} rounds; load average {load[0]:.1f} {load[1]:.1f}"
        f" {load[2]:.1f} on {os.cpu_count()} cores\n"
    )
    header = f"{'CPU ms/run (min / median / max)':>34}{'statements/run':>16}{'commits/run':>13}"
    print(f"{'':<12}{header}")
    for name, rows in results.items():
        cpu = sorted(row["cpu_ms_per_run"] for row in rows)
        print(
            f"{name:<12}{f'{cpu[0]:.1f} / {statistics.median(cpu):.1f} / {cpu[-1]:.1f}':>34}"
            f"{statistics.median(r['statements_per_run'] for r in rows):>16.1f}"
            f"{statistics.median(r['commits_per_run'] for r in rows):>13.1f}"
        )
    median = statistics.median(row["cpu_ms_per_run"] for row in results["this tree"])
    verdict = "met" if median <= TARGET_MS else "NOT met"
    print(f"target <= {TARGET_MS:g} ms coordinator CPU per run: {median:.1f} ms, {verdict}")


if __name__ == "__main__":
    main()
