"""Time to ready and to the first result after starting the embedded stack.

    .venv/bin/python bench/bench_first_run.py [--rounds 2]

Each round starts a fresh process stack (as ``retrainer up`` does) twice, in alternating
order: with the workers' warm-up (``RETRAINER_WARM_UP=true``, the default: each worker
imports its stage functions and sets up MLflow before it reports ready) and without it (the
libraries load with the first message, as before). For each: seconds until ``wait_ready``
(coordinator ``/readyz`` and every worker's health file) and seconds from ``POST /runs`` of
``state_identifier`` on its sample data until the run succeeded. The page cache is warm after
the first start. Target: first run <= 2 s after ready.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import Stack, free_port
from shared.settings import CommonSettings

TARGET_FIRST_RUN_S = 2.0


def once(root: Path, warm: bool) -> tuple[float, float]:
    state = Path(tempfile.mkdtemp(dir=root))
    os.environ["RETRAINER_STATE_DIR"] = str(state)
    settings = CommonSettings()
    prepare_state(settings)
    upload_sample_data(settings, "state_identifier", "datasets/first/raw", seed=0)
    port = free_port()
    env = {**stack_env(settings, port), "RETRAINER_WARM_UP": "true" if warm else "false"}
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    with Stack(env, log_dir=state / "logs") as stack:
        stack.wait_ready(url)
        ready = time.perf_counter() - t0
        with httpx.Client(base_url=url, timeout=60.0) as client:
            t1 = time.perf_counter()
            body = {"recipe": "state_identifier", "data": "datasets/first/raw", "params": {}}
            run_id = client.post("/runs", json=body).json()["id"]
            while (status := client.get(f"/runs/{run_id}").json()["status"]) not in (
                "succeeded",
                "failed",
            ):
                time.sleep(0.02)
            first = time.perf_counter() - t1
    assert status == "succeeded", status
    return ready, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RETRAINER_STARTUP_TIMEOUT_S", "1800")
    figures: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        once(Path(tmp), True)  # untimed: the page cache
        for r in range(args.rounds):
            for warm in (True, False) if r % 2 == 0 else (False, True):
                figures[warm].append(once(Path(tmp), warm))
                print(f"round {r + 1} warm-up {warm}: {figures[warm][-1]}", flush=True)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    print(f"{'workers':<22}{'ready s (min/med/max)':>26}{'first run s (min/med/max)':>30}")
    for warm, rows in figures.items():
        ready = [r for r, _ in rows]
        first = [f for _, f in rows]
        print(
            f"{'warm up before ready' if warm else 'import on 1st message':<22}"
            f"{min(ready):>10.1f}{statistics.median(ready):>8.1f}{max(ready):>8.1f}"
            f"{min(first):>14.2f}{statistics.median(first):>8.2f}{max(first):>8.2f}"
        )
    best = statistics.median(f for _, f in figures[True])
    verdict = "met" if best <= TARGET_FIRST_RUN_S else "NOT met"
    print(f"target: first run <= {TARGET_FIRST_RUN_S} s after ready (warm-up on): {verdict}")
    print("Prefect peer: not measured (no Prefect installed; see docs/benchmarks.md)")


if __name__ == "__main__":
    main()
