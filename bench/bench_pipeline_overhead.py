"""Warm per-run overhead of the five-stage pipeline over calling the same functions directly.

    .venv/bin/python bench/bench_pipeline_overhead.py [--rounds 7] [--params '{}'] [--json out.json]

*Direct*: in this process, the recipe's aggregate -> split -> train, then the same MLflow
logging and registration the train and register workers do and the tag stage's decision and
promotion under the model's lease (``change_champion``), all against the same MLflow store
and blob store as the stack. *Pipeline*: ``POST /runs`` -> ``succeeded`` on the process
stack (coordinator + five workers, SQLite bus, local blobs, MLflow on SQLite), timed by the
run's own record (created -> finished, both as the coordinator recorded them: the last
worker's event included; the status is polled every 0.1 s only to notice the end), every
service ready and warmed up (``wait_ready``) before the first round.

Each round runs one direct and one pipeline run on fresh data (its own seed, so nothing comes
from the cache), in alternating order, after one untimed warm-up round: machine load drifts
over minutes on the shared machine, and interleaving puts both sides of each difference in
the same minute. The overhead is taken per round (pipeline - direct), then min/median/max,
in wall seconds and in CPU seconds (this process for direct; the coordinator and the five
workers, read from /proc, for the pipeline): on a busy shared machine CPU is the steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cli.main import prepare_state, stack_env, upload_sample_data
from cli.stack import Stack, free_port
from services.tag import decide_promotion
from shared.bootstrap import create_blob_store, create_registry
from shared.promotion import change_champion
from shared.recipe_registry import get_recipe
from shared.settings import CommonSettings

RECIPE = "state_identifier"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TARGET_OVERHEAD_S = 0.15


def process_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) the processes used so far."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def stats(values: Sequence[float]) -> str:
    return f"{min(values):6.3f} {statistics.median(values):6.3f} {max(values):6.3f}"


class Direct:
    """The pipeline's work as plain calls in one process."""

    def __init__(self, settings: CommonSettings, params: dict[str, Any]) -> None:
        self.recipe = get_recipe(RECIPE)
        self.params = self.recipe.parse_params(params)
        self.registry = create_registry(settings)
        self.blobs = create_blob_store(settings)

    def run(self, seed: int) -> dict[str, float]:
        recipe, params, registry = self.recipe, self.params, self.registry
        model_name = f"bench-direct-{RECIPE}"
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for name in ("raw", "dataset", "split", "train"):
                (root / name).mkdir()
            recipe.write_sample_data(root / "raw", seed)
            c0 = time.process_time()
            t0 = time.perf_counter()
            recipe.aggregate(root / "raw", root / "dataset", params)
            recipe.split(root / "dataset", root / "split", params)
            result = recipe.train(root / "split", root / "train", params)
            t1 = time.perf_counter()
            run_id = f"direct-{uuid.uuid4()}"
            record = registry.log_training(
                experiment_name=f"bench-direct-{RECIPE}",
                correlation_id=run_id,
                result=result,
                pip_requirements=recipe.pip_requirements,
                tags={"recipe": recipe.name},
            )
            version = registry.create_model_version(
                model_name,
                model_uri=record.model_uri,
                run_id=record.run_id,
                correlation_id=run_id,
                tags={f"metric.{k}": repr(float(v)) for k, v in result.metrics.items()},
            )
            change_champion(
                registry,
                self.blobs,
                model_name,
                version.version,
                lambda champion: decide_promotion(
                    recipe, version.version, result.metrics, champion
                ),
                actor=f"bench {run_id}",
            )
            t2 = time.perf_counter()
            cpu = time.process_time() - c0
        return {"recipe_s": t1 - t0, "wall_s": t2 - t0, "cpu_s": cpu}


def pipeline(
    client: httpx.Client, data: str, params: dict[str, Any], pids: Sequence[int]
) -> dict[str, Any]:
    c0 = process_cpu_s(pids)
    response = client.post("/runs", json={"recipe": RECIPE, "data": data, "params": params})
    response.raise_for_status()
    run_id = response.json()["id"]
    while True:
        final = client.get(f"/runs/{run_id}").json()
        if final["status"] in ("succeeded", "failed", "cancelled"):
            break
        # Seldom: the wall time comes from the run's own timestamps, not from noticing the
        # end, and every status request costs the coordinator CPU that counts below.
        time.sleep(0.1)
    cpu = process_cpu_s(pids) - c0
    wall = (
        datetime.fromisoformat(final["finished_at"]) - datetime.fromisoformat(final["created_at"])
    ).total_seconds()
    assert final["status"] == "succeeded", final
    stages = {s["name"]: s["duration_s"] or 0.0 for s in final["stages"]}
    assert not any(s["cached"] for s in final["stages"]), "a stage came from the cache"
    return {"wall_s": wall, "cpu_s": cpu, "stages": stages, "stage_work_s": sum(stages.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--params", type=json.loads, default={}, help="the recipe's params")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state:
        os.environ["RETRAINER_STATE_DIR"] = state
        os.environ["RETRAINER_WARM_UP"] = "true"
        os.environ.setdefault("RETRAINER_STARTUP_TIMEOUT_S", "1800")
        settings = CommonSettings()
        prepare_state(settings)
        prefixes = []
        for seed in range(args.rounds + 1):
            prefix = f"datasets/bench/seed-{seed}"
            upload_sample_data(settings, RECIPE, prefix, seed=seed)
            prefixes.append(prefix)
        direct = Direct(settings, args.params)
        # Untimed, before the stack starts: this process's imports and the MLflow store's
        # creation (its migrations), which the workers' warm-up then finds done.
        direct.run(1000)
        port = free_port()
        directs: list[dict[str, float]] = []
        runs: list[dict[str, Any]] = []
        with Stack(stack_env(settings, port), log_dir=Path(state) / "logs") as stack:
            url = f"http://127.0.0.1:{port}"
            ready_s = stack.wait_ready(url)
            print(f"stack ready (every worker warmed up) in {ready_s:.1f} s", flush=True)
            pids = [stack.pid(name) for name in stack.names]
            with httpx.Client(base_url=url, timeout=30.0) as client:
                # Untimed warm-up round.
                direct.run(1001)
                pipeline(client, prefixes[-1], args.params, pids)
                for i in range(args.rounds):
                    seed = i
                    if i % 2:
                        runs.append(pipeline(client, prefixes[i], args.params, pids))
                        directs.append(direct.run(seed))
                    else:
                        directs.append(direct.run(seed))
                        runs.append(pipeline(client, prefixes[i], args.params, pids))
                    over = runs[-1]["wall_s"] - directs[-1]["wall_s"]
                    print(
                        f"round {i + 1}: direct {directs[-1]['wall_s']:.3f} s, "
                        f"pipeline {runs[-1]['wall_s']:.3f} s, overhead {over:+.3f} s",
                        flush=True,
                    )
                rerun = pipeline_cached(client, prefixes[0], args.params)

    overheads = [r["wall_s"] - d["wall_s"] for r, d in zip(runs, directs, strict=True)]
    cpu_overheads = [r["cpu_s"] - d["cpu_s"] for r, d in zip(runs, directs, strict=True)]
    hops = [r["wall_s"] - r["stage_work_s"] for r in runs]
    load = os.getloadavg()
    print(f"\nrecipe {RECIPE}, params {args.params}, {args.rounds} interleaved rounds")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores\n")
    print(f"{'seconds per run':<44} {'min':>6} {'median':>6} {'max':>6}")
    print(f"{'direct: recipe functions only':<44} {stats([d['recipe_s'] for d in directs])}")
    print(
        f"{'direct: + MLflow log/register + tag logic':<44} {stats([d['wall_s'] for d in directs])}"
    )
    print(f"{'pipeline: POST /runs -> succeeded':<44} {stats([r['wall_s'] for r in runs])}")
    for stage in runs[0]["stages"]:
        label = f"  stage {stage} (worker-measured)"
        print(f"{label:<44} {stats([r['stages'][stage] for r in runs])}")
    print(f"{'  hops, queueing, bookkeeping':<44} {stats(hops)}")
    print(f"{'overhead (pipeline - direct, per round)':<44} {stats(overheads)}")
    print(f"{'CPU s: direct (this process)':<44} {stats([d['cpu_s'] for d in directs])}")
    print(f"{'CPU s: pipeline (coordinator + 5 workers)':<44} {stats([r['cpu_s'] for r in runs])}")
    print(f"{'CPU overhead (pipeline - direct, per round)':<44} {stats(cpu_overheads)}")
    for label, values in (("wall", overheads), ("CPU", cpu_overheads)):
        verdict = "met" if statistics.median(values) <= TARGET_OVERHEAD_S else "NOT met"
        print(f"target: median {label} overhead <= {TARGET_OVERHEAD_S} s per run: {verdict}")
    print(f"cached re-run (aggregation, split, train from the cache): {rerun:.3f} s")
    if args.json:
        report = {
            "rounds": args.rounds,
            "params": args.params,
            "load": load,
            "direct": directs,
            "pipeline": runs,
            "overhead_s": overheads,
            "cpu_overhead_s": cpu_overheads,
            "cached_rerun_s": rerun,
        }
        args.json.write_text(json.dumps(report, indent=2))


def pipeline_cached(client: httpx.Client, data: str, params: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    run_id = client.post("/runs", json={"recipe": RECIPE, "data": data, "params": params}).json()[
        "id"
    ]
    while client.get(f"/runs/{run_id}").json()["status"] not in ("succeeded", "failed"):
        time.sleep(0.01)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
