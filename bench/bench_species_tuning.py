"""Hyperparameter tuning of species_distribution: the recipe's tuner against plain ``fmin``.

    .venv/bin/python bench/bench_species_tuning.py [--rows 20000] [--features 30]
        [--max-evals 50] [--folds 5] [--workers 1,2] [--repeats 1] [--json out.json]

One data set (the sample generator's site at ``--rows`` occurrences and ``--features``
environmental columns, species Cygnus buccinator, the recipe's default search space), tuned
by each contender in turn, interleaved (every contender once per repeat, in the same order):

- ``fmin, LightGBM 1 thread`` and ``fmin, LightGBM N threads``: the team's pipeline written
  directly — ``hyperopt.fmin(tpe.suggest)`` over an objective that fits an ``LGBMClassifier``
  per fold of a stratified k-fold split with early stopping and returns the mean ROC-AUC,
  one trial after another;
- ``recipe tuner, W worker(s)``: ``recipes.species_distribution.tuning.tune`` as the train
  stage calls it with ``RecipeContext(max_workers=W)`` (W processes, LightGBM on one thread
  each; W = 1 runs in this process).

Every contender evaluates the same initial guess first, with the same seed. Prints each one's
wall time and best CV ROC-AUC, and the target beside the figure: the recipe's tuner on all the
cores must not be slower than the better baseline. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from recipes.species_distribution.model import FeatureFrame
from recipes.species_distribution.sample_data import generate
from recipes.species_distribution.search_space import DEFAULT_SEARCH_SPACE, SearchSpace
from recipes.species_distribution.tuning import lightgbm_params, stratified_folds, tune

SPECIES = "Cygnus buccinator"
SEED = 0
EARLY_STOPPING_ROUNDS = 50


def bench_data(rows: int, n_features: int) -> tuple[pd.DataFrame, np.ndarray]:
    site = generate(SEED, rows=rows, n_features=n_features)
    raw = site.features.drop(columns=["gbifid", "decimallatitude", "decimallongitude"])
    categorical = [c for c in raw.columns if not pd.api.types.is_numeric_dtype(raw[c])]
    features = FeatureFrame(list(raw.columns), categorical).fit(raw).transform(raw)
    return features, site.presence[SPECIES].astype("int64")


def plain_fmin(
    features: pd.DataFrame,
    labels: np.ndarray,
    space: SearchSpace,
    *,
    max_evals: int,
    n_folds: int,
    threads: int,
) -> float:
    """The sequential baseline; returns the best mean fold ROC-AUC."""
    import lightgbm
    from hyperopt import STATUS_OK, Trials, fmin, tpe
    from sklearn.metrics import roc_auc_score

    folds = stratified_folds(labels, n_folds, SEED)

    def objective(tuned: dict[str, Any]) -> dict[str, Any]:
        scores = []
        for train_rows, valid_rows in folds:
            model = lightgbm.LGBMClassifier(
                **lightgbm_params(space.fixed, tuned, seed=SEED, threads=threads)
            )
            x_valid, y_valid = features.iloc[valid_rows], labels[valid_rows]
            model.fit(
                features.iloc[train_rows],
                labels[train_rows],
                eval_X=(x_valid,),
                eval_y=(y_valid,),
                callbacks=[lightgbm.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
            )
            probabilities = np.asarray(model.predict_proba(x_valid))[:, 1]
            scores.append(roc_auc_score(y_valid, probabilities))
        return {"loss": -float(np.mean(scores)), "status": STATUS_OK}

    initial = {
        name: space.tune[name].to_hyperopt_value(value)
        for name, value in space.initial_point().items()
    }
    trials = Trials()
    fmin(
        objective,
        space.to_hyperopt(),
        algo=tpe.suggest,
        max_evals=max_evals,
        trials=trials,
        rstate=np.random.default_rng(SEED),
        points_to_evaluate=[initial],
        show_progressbar=False,
    )
    return -float(min(trials.losses()))


def recipe_tuner(
    features: pd.DataFrame,
    labels: np.ndarray,
    space: SearchSpace,
    *,
    max_evals: int,
    n_folds: int,
    workers: int,
) -> float:
    result = tune(
        features,
        labels,
        space,
        max_evals=max_evals,
        n_folds=n_folds,
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        seed=SEED,
        workers=workers,
        cores=workers,
    )
    return result.best.score


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the tuner's pool workers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=30)
    parser.add_argument("--max-evals", type=int, default=50)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--workers", default="1,2", help="recipe tuner worker counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    worker_counts = [int(w) for w in args.workers.split(",")]

    features, labels = bench_data(args.rows, args.features)
    print(
        f"{platform.python_version()} on {cores} core(s); {len(features)} rows x "
        f"{features.shape[1]} features, {labels.mean():.1%} present; max_evals="
        f"{args.max_evals}, {args.folds} folds, early stopping {EARLY_STOPPING_ROUNDS}"
    )
    space = DEFAULT_SEARCH_SPACE
    common = {"max_evals": args.max_evals, "n_folds": args.folds}
    contenders: dict[str, Callable[[], float]] = {
        "fmin, LightGBM 1 thread": partial(
            plain_fmin, features, labels, space, threads=1, **common
        ),
        f"fmin, LightGBM {cores} threads": partial(
            plain_fmin, features, labels, space, threads=cores, **common
        ),
    }
    for workers in worker_counts:
        contenders[f"recipe tuner, {workers} worker(s)"] = partial(
            recipe_tuner, features, labels, space, workers=workers, **common
        )

    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in contenders}
    scores: dict[str, list[float]] = {name: [] for name in contenders}
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        for name, run in contenders.items():
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            score = run()
            seconds[name].append(time.perf_counter() - started)
            cpu_seconds[name].append(_cpu_seconds() - cpu_started)
            scores[name].append(score)
            print(
                f"  repeat {repeat + 1}: {name:<28} {seconds[name][-1]:7.1f} s wall "
                f"{cpu_seconds[name][-1]:7.1f} s CPU  best CV ROC-AUC {score:.4f}  "
                f"(load {os.getloadavg()[0]:.1f})",
                flush=True,
            )

    median = {name: float(np.median(values)) for name, values in seconds.items()}
    baseline = min(median[n] for n in contenders if n.startswith("fmin"))
    print(
        f"\n{'contender':<30} {'wall s':>8} {'CPU s':>8} {'vs better fmin':>15} "
        f"{'best CV AUC':>12}   (1-min load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end)"
    )
    for name in contenders:
        print(
            f"{name:<30} {median[name]:8.1f} {np.median(cpu_seconds[name]):8.1f} "
            f"{baseline / median[name]:14.2f}x {np.median(scores[name]):12.4f}"
        )
    on_all_cores = f"recipe tuner, {max(worker_counts)} worker(s)"
    target_met = median[on_all_cores] <= baseline
    print(
        f"\ntarget: {on_all_cores} not slower than the better fmin baseline "
        f"({baseline:.1f} s): {median[on_all_cores]:.1f} s -> "
        f"{'met' if target_met else 'NOT met'}"
    )
    if args.json:
        report = {
            "cores": cores,
            "rows": len(features),
            "features": features.shape[1],
            "max_evals": args.max_evals,
            "folds": args.folds,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "load_average_at_start": load_before,
            "best_cv_roc_auc": scores,
            "target_met": target_met,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)


if __name__ == "__main__":
    main()
