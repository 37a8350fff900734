"""The text classification train stage on many short texts, and ONNX against scikit-learn.

    .venv/bin/python bench/bench_text_training.py [--rows 50000] [--trials 50]
        [--zoo all|name,name] [--workers N] [--batches 20] [--json out.json]

Generates ``--rows`` labelled messages (the recipe's sample generator: 80 % train, 20 % test,
~100 characters each), runs aggregation and split (timed, not the point), then the whole train
stage as the worker calls it — clean, the zoo on the subsets, ``--trials`` tuning trials,
the final fit on all training rows, evaluation, ONNX export and its agreement check — and
reports its wall time and peak memory: the resident set of the process and its pool workers
together, sampled every 50 ms (the zoo and the trials run in a process pool), and the
largest single process (``ru_maxrss``).

Then inference in the same run, on batches of 1,000 raw test texts (after one warm-up batch):
the scikit-learn pipeline's ``predict`` against the ONNX model in onnxruntime with one intra-op
thread and with its default (all cores), as rows per second. ``--compare-zoo`` does the same
(one thread) for every exportable zoo member's pickled pipeline (fitted on the subset), so
each family's ONNX form is measured, not only the one that won.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil

from recipes.base import RecipeContext
from recipes.text_classification import recipe
from recipes.text_classification.onnx_export import session, to_onnx
from recipes.text_classification.params import MODEL_NAMES
from recipes.text_classification.sample_data import write_sample_data
from recipes.text_classification.zoo import exportable

BATCH = 1000


class PeakMemory:
    """Largest resident set of this process plus its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.peak = 0
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._done.wait(self._interval_s):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)


def rows_per_second(predict: Any, batches: list[list[str]]) -> float:
    predict(batches[0])  # warm-up
    started = time.perf_counter()
    for batch in batches:
        predict(batch)
    return len(batches) * BATCH / (time.perf_counter() - started)


def onnx_predict(model: Any, threads: int) -> Any:
    labels = session(model, threads=threads)
    return lambda texts: labels.run(
        ["label"], {"text": np.array(texts, dtype=object).reshape(-1, 1)}
    )


def compare_zoo(zoo_dir: Path, batches: list[list[str]]) -> dict[str, dict[str, int]]:
    compared = {}
    for path in sorted(zoo_dir.glob("*.pkl")):
        if not exportable(path.stem):
            continue
        with open(path, "rb") as file:
            pipeline = pickle.load(file)
        compared[path.stem] = {
            "sklearn": round(rows_per_second(pipeline.predict, batches)),
            "onnx_1_thread": round(rows_per_second(onnx_predict(to_onnx(pipeline), 1), batches)),
        }
    return compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--zoo", default="all")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--compare-zoo", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    zoo = list(MODEL_NAMES) if args.zoo == "all" else args.zoo.split(",")
    params = recipe.parse_params({"zoo": zoo, "tuning_trials": args.trials})
    ctx = RecipeContext(max_workers=args.workers)
    results: dict[str, Any] = {
        "rows": args.rows,
        "trials": args.trials,
        "zoo": len(zoo),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train_rows = int(args.rows * 0.8)
        write_sample_data(root / "raw", 0, train_rows=train_rows, test_rows=args.rows - train_rows)
        started = time.perf_counter()
        recipe.aggregate(root / "raw", root / "dataset", params, ctx)
        recipe.split(root / "dataset", root / "split", params, ctx)
        results["aggregate_and_split_s"] = round(time.perf_counter() - started, 2)

        with PeakMemory() as memory:
            started = time.perf_counter()
            result = recipe.train(root / "split", root / "out", params, ctx)
            results["train_stage_s"] = round(time.perf_counter() - started, 2)
        results["peak_rss_mib"] = round(memory.peak / 2**20, 1)
        results["max_single_process_rss_mib"] = round(
            max(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            )
            / 1024,
            1,
        )
        results["metrics"] = {k: round(v, 4) for k, v in result.metrics.items()}
        results["model"] = result.params["model"]
        results["tuned_by"] = result.params["tuned_by"]

        test = pd.read_parquet(root / "split" / "test.parquet")["text"].tolist()
        batches = [
            [test[(i * BATCH + j) % len(test)] for j in range(BATCH)] for i in range(args.batches)
        ]
        with open(root / "out" / "sklearn_pipeline.pkl", "rb") as file:
            pipeline = pickle.load(file)
        results["inference_rows_per_s"] = {
            "sklearn": round(rows_per_second(pipeline.predict, batches)),
            "onnx_1_thread": round(rows_per_second(onnx_predict(result.model, 1), batches)),
            "onnx_default_threads": round(rows_per_second(onnx_predict(result.model, 0), batches)),
        }
        if args.compare_zoo:
            results["zoo_inference_rows_per_s"] = compare_zoo(root / "out" / "zoo", batches)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
