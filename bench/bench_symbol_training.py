"""symbol_detection's stages on the sample, wall and CPU seconds each, beside the baseline of
importing keras-hub (TensorFlow) in a fresh interpreter, which every train stage pays first.

    .venv/bin/python bench/bench_symbol_training.py [--images 60] [--epochs 8] [--image-size 128]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def timed(what: str, call: Callable[[], Any]) -> Any:
    wall, cpu = time.perf_counter(), time.process_time()
    value = call()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{what:<28} {wall:7.1f} s wall {cpu:7.1f} s CPU")
    return value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    started = time.perf_counter()
    usage = subprocess.run(
        [sys.executable, "-c", "import time; import keras_hub; print(time.process_time())"],
        capture_output=True,
        text=True,
        check=True,
    )
    print(
        f"{'baseline: import keras_hub':<28} {time.perf_counter() - started:7.1f} s wall "
        f"{float(usage.stdout.split()[-1]):7.1f} s CPU"
    )
    from recipes.symbol_detection import recipe

    params = recipe.parse_params({"epochs": args.epochs, "image_size": args.image_size})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        from recipes.symbol_detection.sample_data import write_sample_data

        timed("sample data", lambda: write_sample_data(root / "raw", 3, images=args.images))
        timed("aggregation", lambda: recipe.aggregate(root / "raw", root / "ds", params))
        timed("split", lambda: recipe.split(root / "ds", root / "split", params))
        result = timed(
            "train (incl. imports)", lambda: recipe.train(root / "split", root / "out", params)
        )
    shown = {k: round(v, 4) for k, v in result.metrics.items()}
    print(f"fit {result.params['fit_seconds']} s; metrics {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
