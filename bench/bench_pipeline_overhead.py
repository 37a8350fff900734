"""End-to-end overhead of the five-stage pipeline versus calling the recipe directly.

    .venv/bin/python bench/bench_pipeline_overhead.py [--runs 3] [--json out.json]

Direct: the recipe's aggregate -> split -> train in one process, then the same MLflow
logging/registration the workers do. Pipeline: POST /runs -> succeeded on the process stack
(SQLite bus, local blobs, MLflow on SQLite), each run on fresh data so no stage is cached;
then one re-run on unchanged data (aggregation/split/train from the cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from cli.main import prepare_state, stack_env, upload_sample_data, watch_run
from cli.stack import Stack, free_port
from shared.bootstrap import create_registry
from shared.recipe_registry import get_recipe
from shared.settings import CommonSettings

RECIPE = "state_identifier"


def direct(settings: CommonSettings, seed: int) -> dict[str, float]:
    recipe = get_recipe(RECIPE)
    params = recipe.parse_params({})
    registry = create_registry(settings)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("raw", "dataset", "split", "train"):
            (root / name).mkdir()
        recipe.write_sample_data(root / "raw", seed)
        t0 = time.perf_counter()
        recipe.aggregate(root / "raw", root / "dataset", params)
        recipe.split(root / "dataset", root / "split", params)
        result = recipe.train(root / "split", root / "train", params)
        t1 = time.perf_counter()
        run_id = f"direct-{uuid.uuid4()}"
        record = registry.log_training(
            experiment_name="bench-direct",
            correlation_id=run_id,
            result=result,
            pip_requirements=recipe.pip_requirements,
            tags={},
        )
        registry.create_model_version(
            "bench-direct",
            model_uri=record.model_uri,
            run_id=record.run_id,
            correlation_id=run_id,
            tags={},
        )
        t2 = time.perf_counter()
    return {"recipe_s": t1 - t0, "recipe_and_mlflow_s": t2 - t0}


def pipeline(client: httpx.Client, data: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    run = client.post("/runs", json={"recipe": RECIPE, "data": data, "params": {}}).json()
    final = watch_run(client, run["id"], out=lambda _line: None, poll_s=0.05, timeout_s=600)
    wall = time.perf_counter() - t0
    assert final["status"] == "succeeded", final
    busy = sum(s["duration_s"] or 0.0 for s in final["stages"])
    return {
        "wall_s": wall,
        "stage_work_s": busy,
        "hops_and_queueing_s": wall - busy,
        "cached": [s["name"] for s in final["stages"] if s["cached"]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as state:
        import os

        os.environ["RETRAINER_STATE_DIR"] = state
        settings = CommonSettings()
        prepare_state(settings)
        directs = [direct(settings, seed) for seed in range(args.runs)]
        prefixes = []
        for seed in range(args.runs):
            prefix = f"datasets/bench/seed-{seed}"
            upload_sample_data(settings, RECIPE, prefix, seed=seed)
            prefixes.append(prefix)
        port = free_port()
        with Stack(stack_env(settings, port), log_dir=Path(state) / "logs") as stack:
            url = f"http://127.0.0.1:{port}"
            stack.wait_ready(url)
            with httpx.Client(base_url=url, timeout=10.0) as client:
                runs = [pipeline(client, prefix) for prefix in prefixes]
                rerun = pipeline(client, prefixes[0])

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    report = {
        "runs": args.runs,
        "direct_recipe_s": med(directs, "recipe_s"),
        "direct_recipe_and_mlflow_s": med(directs, "recipe_and_mlflow_s"),
        "pipeline_wall_s": med(runs, "wall_s"),
        "pipeline_stage_work_s": med(runs, "stage_work_s"),
        "pipeline_hops_and_queueing_s": med(runs, "hops_and_queueing_s"),
        "cached_rerun_wall_s": rerun["wall_s"],
        "cached_rerun_stages": rerun["cached"],
    }
    report["overhead_vs_direct_mlflow_s"] = (
        report["pipeline_wall_s"] - report["direct_recipe_and_mlflow_s"]
    )
    for key, value in report.items():
        print(f"{key:<32} {value:.3f}" if isinstance(value, float) else f"{key:<32} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
