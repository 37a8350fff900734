"""A bounded load test: many ``POST /runs`` at once on loopback against a real uvicorn server
in front of the coordinator (its loops running, SQLite bus and run store, local blobs) and one
in-process worker per stage doing trivial work. Every request is accepted on a connection that
holds, every run succeeds with one attempt per stage, and no command is sent twice. The full
1,000-run figures are bench/bench_load.py's (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from cli.stack import free_port
from coordinator.api import create_app
from coordinator.domain import Policy
from coordinator.service import BackgroundLoops, Coordinator, LoopIntervals
from coordinator.settings import CoordinatorSettings
from coordinator.store import RunStore, outbox
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import STAGES
from shared.topology import CONTROL_TOPIC, build_topology, command_topic
from shared.worker import StageContext, StageResult, StageSpec, Worker
from tests.recipe_fixtures import echo_recipe, only
from tests.waiting import wait_until

# 100 by default to fit the suite's budget on a shared 2-core machine (about 60-100 s there);
# RETRAINER_TEST_LOAD_RUNS=1000 is the full figure.
RUNS = int(os.environ.get("RETRAINER_TEST_LOAD_RUNS", "100"))
CONCURRENCY = 50
LOCK_S = 30.0


def trivial(ctx: StageContext) -> StageResult:
    return StageResult(metrics={"score": 1.0} if ctx.command.stage == "train" else {})


class Deployment:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = LocalBlobStore(root / "blobs")
        self.blobs.upload_blob("datasets/echo/raw/a.txt", b"1\n2\n")
        store = RunStore.from_url(f"sqlite:///{root / 'coordinator.sqlite'}")
        store.create_tables()
        self.coordinator = Coordinator(
            bus=self.bus(),
            blobs=self.blobs,
            store=store,
            recipes=only(echo_recipe),
            policy=Policy(),
        )
        self.loops = BackgroundLoops(
            self.coordinator,
            LoopIntervals(consumer_wait_s=0.2, relay_interval_s=0.2, watchdog_interval_s=1.0),
        )
        self.workers = [
            Worker(
                StageSpec(stage, (), stage, trivial, cacheable=False, download_inputs=False),
                bus=self.bus(),
                blob_store=self.blobs,
                recipe_lookup=only(echo_recipe),
                lock_duration_s=LOCK_S,
                receive_wait_s=0.2,
                heartbeat_s=1.0,
            )
            for stage in STAGES
        ]
        self._threads = [
            threading.Thread(target=worker.run_forever, daemon=True) for worker in self.workers
        ]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        settings = CoordinatorSettings(state_dir=root)
        app = create_app(settings, coordinator=self.coordinator, run_loops=False)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                log_level="warning",
                log_config=None,
                # As python -m coordinator serves it.
                timeout_keep_alive=int(settings.http_keep_alive_s),
            )
        )
        self._server_thread = threading.Thread(target=self.server.run, daemon=True)

    def bus(self) -> SqliteMessageBus:
        return SqliteMessageBus(
            self.root / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S)
        )

    def start(self) -> None:
        self.loops.start()
        for thread in self._threads:
            thread.start()
        self._server_thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start", poll_s=0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self._server_thread.join(30)
        for worker in self.workers:
            worker.stop()
        for thread in self._threads:
            thread.join(60)
        for worker in self.workers:
            worker.close()
        self.loops.stop()
        self.coordinator.close()

    def outbox_topics(self) -> list[str]:
        with self.coordinator.store._engine.connect() as conn:
            return [row.topic for row in conn.execute(outbox.select())]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    deployment.start()
    yield deployment
    deployment.close()


async def post_all(url: str) -> tuple[list[int], list[str]]:
    """POST /runs ``RUNS`` times from ``CONCURRENCY`` clients; the statuses and the errors."""
    statuses: list[int] = []
    errors: list[str] = []
    remaining = list(range(RUNS))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=600.0, limits=limits) as client:

        async def one_client() -> None:
            while remaining:
                remaining.pop()
                try:
                    response = await client.post(
                        "/runs", json={"recipe": "echo", "data": "datasets/echo/raw"}
                    )
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    statuses.append(response.status_code)

        await asyncio.gather(*(one_client() for _ in range(CONCURRENCY)))
    return statuses, errors


@pytest.mark.slow
def test_many_concurrent_run_requests_are_accepted_and_every_run_succeeds_once(
    deployment: Deployment,
) -> None:
    statuses, errors = asyncio.run(post_all(deployment.url))

    assert errors == [], "no connection errors"
    assert statuses == [202] * RUNS
    store = deployment.coordinator.store

    def drained() -> bool:
        unfinished = sum(store.count_runs(status=s) for s in ("queued", "running"))
        return unfinished == 0

    started = time.monotonic()
    wait_until(drained, f"{RUNS} runs to finish", poll_s=0.5)
    print(f"{RUNS} runs drained in {time.monotonic() - started:.1f} s")
    runs = store.list_runs(limit=RUNS + 1)
    assert len(runs) == RUNS
    assert {run.status for run in runs} == {"succeeded"}
    assert all(stage.attempt == 1 for run in runs for stage in run.stages), "no retries"
    topics = deployment.outbox_topics()
    assert CONTROL_TOPIC not in topics
    for stage in STAGES:
        assert topics.count(command_topic(stage)) == RUNS, f"one {stage} command per run"
