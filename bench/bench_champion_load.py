"""How long a user waits for ``mlflow.pyfunc.load_model("models:/<name>@champion")``.

    .venv/bin/python bench/bench_champion_load.py [--repeats 3] [--json out.json]

Trains the ``state_identifier`` recipe on its sample data, logs, registers and promotes it
through ``MlflowRegistry`` (as the workers do) into a fresh embedded store (MLflow on SQLite),
then, in a fresh interpreter each time (what a user's notebook or script pays), times:

- ``import_s``: ``import mlflow.pyfunc``;
- ``load_s``: ``mlflow.pyfunc.load_model`` of the champion (registry lookup, artifact download,
  MLflow's requirements check, the flavour's imports and the model's deserialisation);
- ``predict_s``: the first ``predict`` on 600 raw rows with integer readings;
- ``total_s``: the interpreter's whole life (start to exit);

each with MLflow's requirements check (``check``) and without it (``skip``:
``suppress_warnings=True``, as the README's lines load it). The medians of ``--repeats`` runs
are printed. Byte-compile the venv first (``make`` does) or the first runs compile MLflow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cli.main import prepare_state
from shared.bootstrap import create_registry
from shared.recipe_registry import get_recipe
from shared.settings import CommonSettings

RECIPE = "state_identifier"

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import mlflow.pyfunc
import pandas as pd
t1 = time.perf_counter()
mlflow.set_tracking_uri(sys.argv[1])
skip = sys.argv[3] == "skip"
model = mlflow.pyfunc.load_model("models:/state_identifier@champion", suppress_warnings=skip)
t2 = time.perf_counter()
raw = pd.read_csv(sys.argv[2]).head(600).drop(columns=["timestamp"])
raw = raw.fillna(0).round().astype("int64")
try:
    model.predict(raw)
    error = None
except Exception as e:  # the figures still say how long loading took
    error = str(e)[:300]
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "predict_s": t3 - t2, "error": error}))
"""


def train_and_promote(settings: CommonSettings, root: Path) -> Path:
    recipe = get_recipe(RECIPE)
    params = recipe.parse_params({})
    for name in ("raw", "dataset", "split", "train"):
        (root / name).mkdir(parents=True)
    recipe.write_sample_data(root / "raw", 0)
    recipe.aggregate(root / "raw", root / "dataset", params)
    recipe.split(root / "dataset", root / "split", params)
    result = recipe.train(root / "split", root / "train", params)
    registry = create_registry(settings)
    record = registry.log_training(
        experiment_name="bench-champion-load",
        correlation_id="bench-champion-load",
        result=result,
        pip_requirements=recipe.pip_requirements,
        tags={},
    )
    version = registry.create_model_version(
        RECIPE,
        model_uri=record.model_uri,
        run_id=record.run_id,
        correlation_id="bench-champion-load",
        tags={},
    )
    registry.promote(RECIPE, version.version, tags={})
    return next((root / "raw").rglob("*.csv"))


def probe(settings: CommonSettings, raw_csv: Path, requirements: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    uri = settings.resolved_mlflow_tracking_uri
    done = subprocess.run(
        [sys.executable, "-c", PROBE, uri, str(raw_csv), requirements],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the probe failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["total_s"] = time.perf_counter() - t0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--state", type=Path, help="keep the trained store here (reused if there)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        state = args.state or Path(temporary)
        os.environ["RETRAINER_STATE_DIR"] = str(state)
        settings = CommonSettings()
        work = state / "work"
        if (work / "raw").is_dir():
            raw_csv = next((work / "raw").rglob("*.csv"))
        else:
            prepare_state(settings)
            raw_csv = train_and_promote(settings, work)
        rows = {
            mode: [probe(settings, raw_csv, mode) for _ in range(args.repeats)]
            for mode in ("check", "skip")
        }
    report: dict[str, Any] = {}
    for mode, runs in rows.items():
        for key in ("import_s", "load_s", "predict_s", "total_s"):
            report[f"{key[:-2]}_{mode}_requirements_s"] = statistics.median(r[key] for r in runs)
    report["repeats"] = args.repeats
    report["predict_error"] = rows["skip"][-1]["error"]
    report["load_average_1m"] = os.getloadavg()[0]
    for key, value in report.items():
        print(f"{key:<32} {value:.3f}" if isinstance(value, float) else f"{key:<32} {value}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
