"""Training throughput of the image classification recipe's MobileNet (images per second).

    .venv/bin/python bench/bench_image_training.py [--images 256] [--configs 224:1.0,128:0.5]
        [--batch-size 32] [--epochs 2] [--fine-tune] [--no-recipe] [--json out.json]

Per configuration (image size : MobileNet alpha), on ``--images`` random RGB images held in
memory, with random weights (the same compute as the ImageNet ones, which cannot be downloaded
offline), after one warm-up epoch that is not timed (it includes tracing the graph):

- ``fit_frozen``: ``fit`` of the whole model with the base frozen, as the ported use case did:
  a MobileNet forward pass per image and epoch;
- ``features``: one forward pass of the frozen base (what the recipe does once instead);
- ``head_fit``: fitting only the softmax head on those features (what the recipe does per epoch);
- ``four_epochs_*_s``: 4 epochs (the default) from a fresh model, tracing included, both ways;
- ``fit_fine_tune`` (``--fine-tune``): ``fit`` with the base trainable (forward + backward);
- ``recipe``: ``recipe.train`` end to end on generated sample images aggregated at that size
  (PNG decoding, 4 epochs, validation, artifacts): wall seconds, and training images x epochs
  per second of its fit time.

Prints the device TensorFlow uses; writes everything as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from recipes.image_classification import ImageClassificationParams, build_model, recipe
from recipes.image_classification.sample_data import write_sample_data
from recipes.image_classification.training import describe_device

N_CLASSES = 3
RECIPE_EPOCHS = 4


def _timed_fit(trainer: Any, x: Any, y: Any, batch_size: int, epochs: int) -> float:
    trainer.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # warm-up: tracing
    started = time.perf_counter()
    trainer.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0)
    return time.perf_counter() - started


def bench_config(
    size: int, alpha: float, images: int, batch_size: int, epochs: int, fine_tune: bool
) -> dict[str, Any]:
    import keras

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (images, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(images) % N_CLASSES, N_CLASSES)
    params = ImageClassificationParams(
        weights="none", image_size=size, alpha=alpha, batch_size=batch_size
    )
    result: dict[str, Any] = {"image_size": size, "alpha": alpha, "images": images}

    model, extractor, head = build_model(N_CLASSES, params)
    result["parameters"] = model.count_params()
    trainer = keras.Model(model.inputs, model.outputs)
    trainer.compile(optimizer="adam", loss="categorical_crossentropy")
    seconds = _timed_fit(trainer, x, y, batch_size, epochs)
    result["fit_frozen_images_per_s"] = round(images * epochs / seconds, 1)

    extractor.predict(x[:batch_size], batch_size=batch_size, verbose=0)  # warm-up
    started = time.perf_counter()
    features = extractor.predict(x, batch_size=batch_size, verbose=0)
    seconds = time.perf_counter() - started
    result["features_images_per_s"] = round(images / seconds, 1)

    head.compile(optimizer="adam", loss="categorical_crossentropy")
    seconds = _timed_fit(head, features, y, batch_size, epochs)
    result["head_fit_images_per_s"] = round(images * epochs / seconds, 1)

    # The recipe's default 4 epochs on a fresh model, graph tracing included (what a run pays):
    # whole-model fit with a frozen base versus one feature pass plus fitting the head.
    naive_model, _, _ = build_model(N_CLASSES, params)
    naive = keras.Model(naive_model.inputs, naive_model.outputs)
    naive.compile(optimizer="adam", loss="categorical_crossentropy")
    started = time.perf_counter()
    naive.fit(x, y, batch_size=batch_size, epochs=RECIPE_EPOCHS, verbose=0)
    result["four_epochs_fit_frozen_s"] = round(time.perf_counter() - started, 2)
    _, cached_extractor, cached_head = build_model(N_CLASSES, params)
    cached_head.compile(optimizer="adam", loss="categorical_crossentropy")
    started = time.perf_counter()
    cached_features = cached_extractor.predict(x, batch_size=batch_size, verbose=0)
    cached_head.fit(cached_features, y, batch_size=batch_size, epochs=RECIPE_EPOCHS, verbose=0)
    result["four_epochs_features_then_head_s"] = round(time.perf_counter() - started, 2)

    if fine_tune:
        tunable, _, _ = build_model(N_CLASSES, params.model_copy(update={"trainable_base": True}))
        tunable.compile(optimizer="adam", loss="categorical_crossentropy")
        seconds = _timed_fit(tunable, x, y, batch_size, epochs)
        result["fit_fine_tune_images_per_s"] = round(images * epochs / seconds, 1)
    return result


def bench_recipe(size: int, alpha: float, images: int, batch_size: int) -> dict[str, Any]:
    params = recipe.parse_params(
        {"weights": "none", "image_size": size, "alpha": alpha, "batch_size": batch_size}
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_label = max(2, images // N_CLASSES)
        write_sample_data(root / "raw", 0, per_label)
        started = time.perf_counter()
        recipe.aggregate(root / "raw", root / "dataset", params)
        aggregate_s = time.perf_counter() - started
        split = recipe.split(root / "dataset", root / "split", params)
        started = time.perf_counter()
        result = recipe.train(root / "split", root / "out", params)
        train_s = time.perf_counter() - started
    fit_s = result.metrics["fit_seconds"]
    epochs = result.params["epochs"]
    return {
        "recipe_images": split.rows,
        "recipe_aggregate_s": round(aggregate_s, 2),
        "recipe_train_s": round(train_s, 2),
        "recipe_fit_s": round(fit_s, 2),
        "recipe_fit_images_per_s": round(split.details["train_rows"] * epochs / fit_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--configs", default="224:1.0,128:0.5", help="size:alpha,...")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--fine-tune", action="store_true", help="also time a trainable base")
    parser.add_argument("--no-recipe", action="store_true", help="skip recipe.train end to end")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import tensorflow as tf

    device = describe_device(tf)
    print(f"device: {device}; tensorflow {tf.__version__}; {os.cpu_count()} CPU core(s)")
    results = []
    for config in args.configs.split(","):
        size_text, alpha_text = config.split(":")
        size, alpha = int(size_text), float(alpha_text)
        row = bench_config(size, alpha, args.images, args.batch_size, args.epochs, args.fine_tune)
        if not args.no_recipe:
            row.update(bench_recipe(size, alpha, args.images, args.batch_size))
        results.append(row)
        print(
            "  ".join(f"{key}={value}" for key, value in row.items()),
            flush=True,
        )
    if args.json:
        report = {
            "device": device,
            "tensorflow": tf.__version__,
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "batch_size": args.batch_size,
            "timed_epochs": args.epochs,
            "results": results,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
