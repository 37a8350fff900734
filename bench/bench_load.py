"""Load: many ``POST /runs`` at once against the embedded process stack, then the drain.

    .venv/bin/python bench/bench_load.py [--runs 1000] [--concurrency 50]
        [--worker-concurrency 4] [--json out.json]

The stack is ``retrainer up``'s (the coordinator and one worker process per stage, SQLite bus,
local blobs, MLflow on SQLite) on loopback. Every run is ``state_identifier`` on the same small
sample, so after the first run aggregation, split and train come from the cache and each run
costs its bookkeeping, a model version (register) and a champion decision (tag): the trivial
recipe run the coordinator and the bus are measured with. ``--runs`` requests are sent by
``--concurrency`` clients on keep-alive connections; then it waits until every run is
terminal. Reported: requests per second, latency p50/p95/p99/max, HTTP statuses, connection
errors, the drain time (the last POST answered -> every run terminal), runs per status, stage
attempts beyond the first (retries) and deliveries beyond the first, the load average and the
CPU seconds each service used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import Stack, free_port
from shared.settings import CommonSettings

RECIPE = "state_identifier"
DATA = "datasets/bench-load/sample"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def post_runs(url: str, runs: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    ids: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(runs):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:

        async def one_client() -> None:
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/runs", json={"recipe": RECIPE, "data": DATA, "params": {}}
                    )
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
                if response.status_code == 202:
                    ids.append(response.json()["id"])

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(runs / elapsed, 1),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 1),
            "p95": round(percentile(latencies, 0.95) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
        }
        if latencies
        else {},
        "statuses": statuses,
        "connection_errors": errors,
        "ids": ids,
    }


def all_runs(client: httpx.Client) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        page = client.get("/runs", params={"limit": 500, "offset": len(found)}).json()
        found += page["runs"]
        if len(found) >= page["total"] or not page["runs"]:
            return found


def drain(client: httpx.Client, runs: int, timeout_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        unfinished = sum(
            client.get("/runs", params={"status": status, "limit": 1}).json()["total"]
            for status in ("waiting", "queued", "running")
        )
        if unfinished == 0:
            break
        time.sleep(2.0)
    return time.perf_counter() - started


def run(
    runs: int, concurrency: int, worker_concurrency: int, drain_timeout_s: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        settings = CommonSettings(state_dir=state)
        upload_sample_data(settings, RECIPE, DATA, seed=1)
        prepare_state(settings)
        port = free_port()
        env = {
            **stack_env(settings, port),
            "RETRAINER_MAX_CONCURRENCY": str(worker_concurrency),
            "RETRAINER_LOG_LEVEL": "WARNING",
        }
        stack = Stack(env, log_dir=state / "logs")
        stack.start()
        try:
            url = f"http://127.0.0.1:{port}"
            stack.wait_ready(url, timeout_s=600)
            processes = {name: psutil.Process(stack.pid(name)) for name in stack.names}
            cpu_before = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}
            load_before = os.getloadavg()
            posted = asyncio.run(post_runs(url, runs, concurrency))
            with httpx.Client(base_url=url, timeout=120.0) as client:
                drain_s = drain(client, runs, drain_timeout_s)
                final = all_runs(client)
                details = [client.get(f"/runs/{run['id']}").json() for run in final]
            load_after = os.getloadavg()
            cpu = {
                name: round(sum(p.cpu_times()[:2]) - cpu_before[name], 1)
                for name, p in processes.items()
            }
        finally:
            stack.stop()
    statuses: dict[str, int] = {}
    for summary in final:
        statuses[summary["status"]] = statuses.get(summary["status"], 0) + 1
    retries = sum(max(0, stage["attempt"] - 1) for run in details for stage in run["stages"])
    redelivered = sum(max(0, stage["deliveries"] - 1) for run in details for stage in run["stages"])
    ids = posted.pop("ids")
    return {
        "runs": runs,
        "concurrency": concurrency,
        "worker_concurrency": worker_concurrency,
        **posted,
        "accepted": len(ids),
        "drain_s": round(drain_s, 1),
        "run_statuses": statuses,
        "retries": retries,
        "redeliveries": redelivered,
        "load_average_before": [round(v, 1) for v in load_before],
        "load_average_after": [round(v, 1) for v in load_after],
        "cpu_s": cpu,
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--worker-concurrency", type=int, default=4)
    parser.add_argument("--drain-timeout-s", type=float, default=7200.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.runs, args.concurrency, args.worker_concurrency, args.drain_timeout_s)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
