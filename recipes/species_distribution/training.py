"""Train: tune, score, refit — the team's train, score and train-to-deploy steps in one stage.

1. **Tune** (``tuning.py``): hyperopt TPE over the search space — the run's inline
   ``search_space``, else the site's ``lgbm_params.yml``, else ``DEFAULT_SEARCH_SPACE`` —
   each trial scored by the mean ROC-AUC of a stratified k-fold CV on the training rows. Every
   trial is returned as a child run (its parameters, each fold's ROC-AUC and best round, its
   duration); the winner's parameters are written to ``best_parameters.json``.
2. **Score**: a model with the best parameters, fitted on the training rows, scores the test
   rows (and the validation rows, if the split made some): ``metrics.json``,
   ``confusion_matrix.png``, ``classification_report.png``. The number of boosting rounds is
   the best trial's mean best round over its folds (early stopping on test would peek at it).
3. **Refit**: the same parameters fitted on every row (train, validation, test) — the model
   that is registered (``model.py``), so a species' model uses all its labels.

The run's metrics are the test scores (primary: ``roc_auc``) plus the best CV score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import recipes
import shared
from recipes.base import ChildRun, RecipeContext, RecipeParams, TrainResult
from recipes.species_distribution.dataset import (
    CLASS_NAMES,
    SEARCH_SPACE_FILE,
    TEST_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    DatasetSchema,
    read_table,
)
from recipes.species_distribution.evaluation import (
    evaluate,
    flat_metrics,
    write_confusion_matrix,
    write_metrics,
    write_report_heatmap,
)
from recipes.species_distribution.model import SKOPS_TRUSTED_TYPES, FeatureFrame, build_model
from recipes.species_distribution.params import SpeciesDistributionParams, coerce_params
from recipes.species_distribution.search_space import (
    DEFAULT_SEARCH_SPACE,
    SearchSpace,
    parse_search_space,
)
from recipes.species_distribution.tuning import TrialResult, lightgbm_params, tune
from shared.errors import DataValidationError

BEST_PARAMETERS_FILE = "best_parameters.json"
INPUT_EXAMPLE_ROWS = 5

log = logging.getLogger(__name__)


def train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    from lightgbm import LGBMClassifier

    p = coerce_params(params)
    ctx = ctx or RecipeContext()
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schema = DatasetSchema.read(split_dir)
    sides = {"train": read_table(split_dir, TRAIN_FILE), "test": read_table(split_dir, TEST_FILE)}
    if (split_dir / VALIDATION_FILE).is_file():
        sides["validation"] = read_table(split_dir, VALIDATION_FILE)
    columns, target = schema.feature_columns, schema.target_column
    _require_classes(sides, target, p.n_folds)
    space, space_source = _search_space(split_dir, p)

    train_rows = sides["train"]
    features = FeatureFrame(columns, schema.categorical_columns).fit(train_rows[columns])
    labels = train_rows[target].to_numpy(dtype="int64")
    cores = ctx.max_workers
    workers = min(p.max_parallel_trials or cores, cores)
    tuning = tune(
        features.transform(train_rows[columns]),
        labels,
        space,
        max_evals=p.max_evals,
        n_folds=p.n_folds,
        early_stopping_rounds=p.early_stopping_rounds,
        seed=p.seed,
        workers=workers,
        cores=cores,
        no_progress_trials=p.no_progress_trials,
        check_cancelled=ctx.check_cancelled,
    )
    best = tuning.best
    tuned = {**best.params, "n_estimators": best.rounds}
    best_parameters = {**space.fixed, **tuned}
    artifacts = [_write_best_parameters(out_dir, best_parameters, tuning.best, space, space_source)]
    log.info(
        "tuned %s: %d trials on %d worker(s) in %.1f s, best CV ROC-AUC %.4f (trial %d)",
        schema.species,
        len(tuning.trials),
        tuning.workers,
        tuning.wall_s,
        best.score,
        best.number,
    )

    def fitted(rows: pd.DataFrame) -> Any:
        classifier = LGBMClassifier(
            **lightgbm_params(space.fixed, tuned, seed=p.seed, threads=cores)
        )
        model = build_model(columns, schema.categorical_columns, classifier)
        return model.fit(rows[columns], rows[target].to_numpy(dtype="int64"))

    ctx.check_cancelled()
    scoring_model = fitted(train_rows)
    reports = {
        side: evaluate(
            rows[target].to_numpy(dtype="int64"),
            scoring_model.predict_proba(rows[columns])[:, 1],
        )
        for side, rows in sides.items()
        if side != "train"
    }
    title = f"{schema.species}: test set"
    artifacts += [
        write_metrics(
            out_dir,
            {
                "species": schema.species,
                **reports,
                "cv": {"roc_auc": best.score, "fold_roc_auc": best.fold_scores},
            },
        ),
        write_confusion_matrix(out_dir, reports["test"], title),
        write_report_heatmap(out_dir, reports["test"], title),
    ]

    ctx.check_cancelled()
    all_rows = pd.concat(list(sides.values()), ignore_index=True)
    model = fitted(all_rows)
    # The registered model predicts with LightGBM's default threads on whatever serves it.
    model.named_steps["classifier"].set_params(n_jobs=None)

    metrics = {
        **flat_metrics(reports["test"]),
        **(flat_metrics(reports["validation"], "validation_") if "validation" in reports else {}),
        "cv_roc_auc": best.score,
        "cv_roc_auc_std": float(np.std(best.fold_scores)),
        "trials": float(len(tuning.trials)),
        "trials_failed": float(sum(1 for t in tuning.trials if t.error)),
        "tuning_wall_s": tuning.wall_s,
        "best_trial": float(best.number),
        "rows_train": float(len(train_rows)),
        "rows_all": float(len(all_rows)),
    }
    input_example = all_rows[columns].head(INPUT_EXAMPLE_ROWS).reset_index(drop=True)
    return TrainResult(
        model=model,
        flavor="sklearn",
        metrics=metrics,
        params={
            **p.model_dump(mode="json", exclude={"search_space"}),
            "species": schema.species,
            "search_space": space_source,
            "features": len(columns),
            "categorical_columns": schema.categorical_columns,
            "tuning_workers": tuning.workers,
            "threads_per_fit": tuning.threads_per_fit,
            "stopped_early": tuning.stopped_early,
            **{f"best_{name}": value for name, value in best_parameters.items()},
        },
        artifacts=artifacts,
        input_example=input_example,
        log_model_options={
            "pyfunc_predict_fn": "predict_proba",
            "signature": _signature(all_rows[columns], schema),
            # MLflow's default skops format only loads types it is told to trust.
            "skops_trusted_types": list(SKOPS_TRUSTED_TYPES),
            # FeatureFrame travels with the model, so it loads where retrainer is not installed.
            "code_paths": [str(Path(package.__path__[0])) for package in (recipes, shared)],
            "metadata": {"species": schema.species, "classes": list(CLASS_NAMES)},
        },
        children=[_child_run(trial, best.number) for trial in tuning.trials],
    )


def _search_space(split_dir: Path, p: SpeciesDistributionParams) -> tuple[SearchSpace, str]:
    """The space and where it came from: the run's params, the site's file, or the default."""
    if p.search_space is not None:
        return p.search_space, "params"
    path = split_dir / SEARCH_SPACE_FILE
    if path.is_file():
        return parse_search_space(path.read_text(), source=SEARCH_SPACE_FILE), "site file"
    return DEFAULT_SEARCH_SPACE, "default"


def _require_classes(sides: dict[str, pd.DataFrame], target: str, n_folds: int) -> None:
    counts = sides["train"][target].value_counts()
    smallest = int(counts.min()) if len(counts) == 2 else 0
    if smallest < n_folds:
        raise DataValidationError(
            f"the training rows hold {smallest} of their rarest class; a stratified "
            f"{n_folds}-fold CV needs at least {n_folds} (lower n_folds or label more sites)",
            file=TRAIN_FILE,
        )
    for side, rows in sides.items():
        if rows[target].nunique() < 2:
            raise DataValidationError(
                f"the {side} rows hold a single class; ROC-AUC needs both PRESENT and ABSENT "
                "(lower test_fraction / validation_fraction or label more sites)",
                file=f"{side}.parquet",
            )


def _write_best_parameters(
    out_dir: Path,
    best_parameters: dict[str, Any],
    best: TrialResult,
    space: SearchSpace,
    source: str,
) -> Path:
    path = out_dir / BEST_PARAMETERS_FILE
    content = {
        "parameters": best_parameters,
        "trial": best.number,
        "cv_roc_auc": best.score,
        "fold_roc_auc": best.fold_scores,
        "fold_best_iterations": best.best_iterations,
        "search_space": {"source": source, **space.model_dump(mode="json")},
    }
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def _child_run(trial: TrialResult, best_number: int) -> ChildRun:
    metrics: dict[str, float] = {
        "duration_s": trial.fit_seconds,
        "wall_s": trial.wall_s,
    }
    if not trial.error:
        metrics["cv_roc_auc"] = trial.score
        metrics["cv_roc_auc_std"] = float(np.std(trial.fold_scores))
        metrics["best_iteration"] = float(trial.rounds)
        metrics.update({f"fold_{k}_roc_auc": s for k, s in enumerate(trial.fold_scores)})
    tags = {
        "trial": str(trial.number),
        "status": "failed" if trial.error else "ok",
        "best": str(trial.number == best_number).lower(),
    }
    if trial.number == 0:
        tags["initial_guess"] = "true"
    if trial.error:
        tags["error"] = trial.error[:500]
    return ChildRun(
        name=f"trial-{trial.number:03d}", params=trial.params, metrics=metrics, tags=tags
    )


def _signature(rows: pd.DataFrame, schema: DatasetSchema) -> Any:
    """Each feature column by name, required. Text columns are strings; numeric ones (and
    numeric-coded categories) are ``any``: MLflow refuses int64 where a schema says double
    and float64 (an integer column with a gap) where it says long, so the model casts them
    itself (``FeatureFrame``) and a batch may hold either. The output is
    ``[P(ABSENT), P(PRESENT)]`` per row."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema, TensorSpec

    def spec(column: str) -> ColSpec:
        text = not pd.api.types.is_numeric_dtype(rows[column]) and not (
            pd.api.types.is_bool_dtype(rows[column])
        )
        return ColSpec("string" if text else AnyType(), column, required=True)

    outputs = Schema([TensorSpec(np.dtype("float64"), (-1, len(CLASS_NAMES)))])
    return ModelSignature(inputs=Schema([spec(c) for c in schema.feature_columns]), outputs=outputs)
