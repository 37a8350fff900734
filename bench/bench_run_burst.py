"""Runs per second: a burst of runs of a trivial recipe drained by the embedded stack.

    .venv/bin/python bench/bench_run_burst.py [--runs 500] [--replicas 1 2 4] [--rounds 1]
        [--baseline-tree /path/to/other/checkout]

For each replica count, a fresh process stack (coordinator + that many worker processes per
stage, SQLite bus, local blobs, MLflow on SQLite) with ``tests.trivial_recipe`` (each stage
does next to nothing; train logs a constant pyfunc model; every run has its own seed, so no
stage is served from the cache). All runs are posted at once, then the bench waits until
every one is terminal. Reported: runs/s from the first POST to the last terminal run, the
coordinator's CPU milliseconds per run (/proc), failed runs and stage attempts beyond the
first (spurious retries), and each stage's workers' CPU milliseconds per run. With
``--baseline-tree``, each round also drains the burst on a stack running that checkout's
code, alternating which goes first. Targets: >= 5 runs/s, coordinator <= 30 ms CPU per run,
no retry.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import SERVICE_MODULES, Stack, free_port
from shared.messages import STAGES
from shared.settings import CommonSettings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HERE = Path(__file__).resolve().parents[1]
TARGET_RUNS_PER_S = 5.0
TARGET_COORDINATOR_MS = 30.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def burst(runs: int, replicas: int, root: Path, tree: Path) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(prefix=f"replicas-{replicas}-", dir=root))
    os.environ["RETRAINER_STATE_DIR"] = str(state)
    settings = CommonSettings()
    prepare_state(settings)
    upload_sample_data(settings, "state_identifier", "datasets/trivial/raw", seed=0)
    services = {"coordinator": SERVICE_MODULES["coordinator"]}
    for stage in STAGES:
        for k in range(replicas):
            services[f"{stage}-{k + 1}"] = SERVICE_MODULES[stage]
    port = free_port()
    env = {
        **stack_env(settings, port),
        "RETRAINER_RECIPE_MODULES": '["tests.trivial_recipe"]',
        "RETRAINER_WARM_UP": "true",
        # The services run that checkout's code: ``python -m`` looks in the working directory
        # first, then PYTHONPATH.
        "PYTHONPATH": str(tree),
    }
    url = f"http://127.0.0.1:{port}"
    here = Path.cwd()
    os.chdir(tree)
    try:
        with Stack(env, log_dir=state / "logs", services=services) as stack:
            return _drain(stack, url, runs, replicas, services)
    finally:
        os.chdir(here)


def _drain(
    stack: Stack, url: str, runs: int, replicas: int, services: dict[str, str]
) -> dict[str, Any]:
    ready = stack.wait_ready(url)
    coordinator = stack.pid("coordinator")
    with httpx.Client(base_url=url, timeout=60.0) as client:
        # One untimed run: every process's first-call paths.
        warm = client.post(
            "/runs",
            json={"recipe": "trivial", "data": "datasets/trivial/raw", "params": {"seed": -1}},
        ).json()["id"]
        while client.get(f"/runs/{warm}").json()["status"] not in ("succeeded", "failed"):
            time.sleep(0.1)
        c0 = cpu_s(coordinator)
        pids = {name: stack.pid(name) for name in services}
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        t0 = time.perf_counter()

        def post(seed: int) -> str:
            body = {
                "recipe": "trivial",
                "data": "datasets/trivial/raw",
                "params": {"seed": seed},
            }
            response = client.post("/runs", json=body)
            response.raise_for_status()
            return str(response.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(post, range(runs)))
        posted_s = time.perf_counter() - t0
        while True:
            done = sum(
                client.get("/runs", params={"status": status, "limit": 1}).json()["total"]
                for status in ("succeeded", "failed", "cancelled")
            )
            if done >= runs + 1:
                break
            time.sleep(0.25)
        wall = time.perf_counter() - t0
        coordinator_cpu = cpu_s(coordinator) - c0
        # Each stage's worker processes together, to find the stage that bounds the rate.
        stage_ms = {
            stage: sum(
                cpu_s(pid) - before[name]
                for name, pid in pids.items()
                if name.rsplit("-", 1)[0] == stage
            )
            / runs
            * 1e3
            for stage in STAGES
        }
        finals = [client.get(f"/runs/{run_id}").json() for run_id in ids]
    retries = sum(max(s["attempt"] - 1, 0) for f in finals for s in f["stages"])
    failed = sum(f["status"] != "succeeded" for f in finals)
    return {
        "replicas": replicas,
        "ready_s": ready,
        "posted_s": posted_s,
        "wall_s": wall,
        "runs_per_s": runs / wall,
        "coordinator_ms_per_run": coordinator_cpu / runs * 1e3,
        "stage_ms_per_run": stage_ms,
        "failed": failed,
        "retries": retries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout whose stack drains the same burst, alternating with this one's",
    )
    args = parser.parse_args()
    os.environ.setdefault("RETRAINER_STARTUP_TIMEOUT_S", "1800")
    trees = {"this tree": HERE}
    if args.baseline_tree:
        trees = {"baseline": args.baseline_tree.resolve(), **trees}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for replicas in args.replicas:
            for k in range(args.rounds):
                # Alternate which tree goes first, so neither always gets the quieter minute.
                order = list(trees.items())[:: -1 if k % 2 else 1]
                for name, tree in order:
                    rows.append({"tree": name, **burst(args.runs, replicas, Path(tmp), tree)})
                    print(rows[-1], flush=True)
    load = os.getloadavg()
    print(
        f"\n{args.runs} runs of tests.trivial_recipe; load average {load[0]:.1f} {load[1]:.1f}"
        f" {load[2]:.1f} on {os.cpu_count()} cores\n"
    )
    stages = "".join(f"{stage:>13}" for stage in STAGES)
    print(
        f"{'tree':<11}{'replicas/stage':<16}{'runs/s':>8}{'coordinator ms/run':>20}"
        f"{'failed':>8}{'retries':>9}"
        f"   CPU ms/run of each stage's workers:{stages}"
    )
    for row in rows:
        stage_ms = "".join(f"{row['stage_ms_per_run'][stage]:>13.1f}" for stage in STAGES)
        print(
            f"{row['tree']:<11}{row['replicas']:<16}{row['runs_per_s']:>8.2f}{row['coordinator_ms_per_run']:>20.1f}"
            f"{row['failed']:>8}{row['retries']:>9}{'':>38}{stage_ms}"
        )
    rows = [row for row in rows if row["tree"] == "this tree"]
    best = max(row["runs_per_s"] for row in rows)
    print(
        f"target >= {TARGET_RUNS_PER_S} runs/s: {'met' if best >= TARGET_RUNS_PER_S else 'NOT met'}"
    )
    worst = max(row["coordinator_ms_per_run"] for row in rows)
    verdict = "met" if worst <= TARGET_COORDINATOR_MS else "NOT met"
    print(f"target coordinator <= {TARGET_COORDINATOR_MS:g} ms CPU per run: {verdict}")


if __name__ == "__main__":
    main()
