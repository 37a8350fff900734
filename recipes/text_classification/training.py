"""Train: model zoo and tuning on the subsets, the final model on all data, ONNX export.

1. **Clean** every text once (``cleaning.py``).
2. **Zoo**: each model in ``zoo`` (``zoo.py``) is fitted on the train subset and scored on the
   test subset, in parallel on ``ctx.max_workers`` processes; each is a child run with its
   metrics and its pickled pipeline (cleaning + TF-IDF + classifier: it takes raw text).
3. **Tuning**: the best zoo member that can be exported (by macro F1, then accuracy) gets
   ``tuning_trials`` random-search trials over its space and the vectoriser's (scikit-learn's
   ``ParameterSampler``, seeded), fitted and scored like the zoo, in parallel; each trial is a
   child run, and all of them are also the table ``tuning_trials.csv``.
4. **Final model**: the best trial's settings (the zoo member's defaults when no trial beats
   it) fitted on all training rows, evaluated on the whole test set: accuracy, macro and
   weighted precision/recall/F1 (primary: ``f1_macro``), ``classification_report.json``/
   ``.txt`` and ``confusion_matrix.png``.
5. **ONNX**: the pipeline as one ONNX graph over raw text (``onnx_export.py``), checked
   against scikit-learn on the test set: ``onnx_agreement`` is the share of rows with the same
   label; below ``min_onnx_agreement`` the stage fails rather than register a model that does
   not do what was evaluated. Registered with MLflow's ``onnx`` flavour.

``ctx.check_cancelled()`` runs after every zoo member and trial: a cancelled run stops within
one fit.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recipes.base import ChildRun, RecipeContext, RecipeParams, TrainResult
from recipes.text_classification.cleaning import TextCleaner, clean_texts
from recipes.text_classification.dataset import LABEL, SUBSET, TEST_FILE, TEXT, TRAIN_FILE
from recipes.text_classification.onnx_export import (
    INPUT_NAME,
    LABEL_OUTPUT,
    SCORE_OUTPUT,
    predict,
    session,
    set_metadata,
    to_onnx,
)
from recipes.text_classification.params import (
    ModelName,
    TextClassificationParams,
    coerce_params,
)
from recipes.text_classification.zoo import (
    exportable,
    member,
    readable_params,
    search_space,
)
from shared.errors import DataValidationError, PermanentError

ZOO_DIR = "zoo"
TRIALS_FILE = "tuning_trials.csv"
REPORT_JSON = "classification_report.json"
REPORT_TEXT = "classification_report.txt"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
PIPELINE_FILE = "sklearn_pipeline.pkl"
SCORED_BY = ("f1_macro", "accuracy")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fitted:
    """One zoo member or trial: its settings, test-subset metrics, or the error it hit."""

    name: str
    model: ModelName
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    artifact: Path | None = None

    @property
    def rank_key(self) -> tuple[float, ...]:
        return tuple(self.metrics.get(metric, -1.0) for metric in SCORED_BY)


@dataclass(frozen=True)
class Texts:
    """Cleaned texts and labels of the train/test subsets (what the zoo and trials see)."""

    train: list[str]
    train_labels: list[str]
    test: list[str]
    test_labels: list[str]


class ModelSelectionError(PermanentError):
    """No zoo member could be fitted, so there is nothing to tune or export."""


class OnnxExportError(PermanentError):
    """The ONNX graph does not predict what the scikit-learn model predicts."""


def train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    p = coerce_params(params)
    ctx = ctx or RecipeContext()
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_set = pd.read_parquet(split_dir / TRAIN_FILE)
    test_set = pd.read_parquet(split_dir / TEST_FILE)
    if train_set[LABEL].nunique() < 2:
        raise DataValidationError("the training set needs at least two labels", file=TRAIN_FILE)
    started = time.perf_counter()
    clean_train = clean_texts(train_set[TEXT])
    clean_test = clean_texts(test_set[TEXT])
    subsets = _subsets(train_set, test_set, clean_train, clean_test)
    ctx.check_cancelled()

    zoo_dir = out_dir / ZOO_DIR
    zoo_dir.mkdir(exist_ok=True)
    zoo = sorted(
        run_parallel(
            [
                (fit_and_score, (name, name, {}, subsets, p, zoo_dir / f"{name}.pkl"))
                for name in p.zoo
            ],
            ctx,
        ),
        key=lambda fitted: p.zoo.index(fitted.model),
    )
    candidates = [f for f in zoo if f.error is None and exportable(f.model)]
    if not candidates:
        errors = "; ".join(f"{f.name}: {f.error}" for f in zoo if f.error)
        raise ModelSelectionError(f"no zoo model that can be exported could be fitted ({errors})")
    best = max(candidates, key=lambda fitted: fitted.rank_key)
    log.info("best zoo model: %s %s", best.model, best.metrics)

    from sklearn.model_selection import ParameterSampler

    sampled = list(
        ParameterSampler(search_space(best.model), n_iter=p.tuning_trials, random_state=p.seed)
    )
    trials = sorted(
        run_parallel(
            [
                (fit_and_score, (f"{i:03d}", best.model, s, subsets, p, None))
                for i, s in enumerate(sampled)
            ],
            ctx,
        ),
        key=lambda fitted: fitted.name,
    )
    trials_table = write_trials(out_dir / TRIALS_FILE, trials)
    scored = [t for t in trials if t.error is None]
    winner = max([best, *scored], key=lambda fitted: fitted.rank_key)
    search_seconds = time.perf_counter() - started
    ctx.check_cancelled()

    pipeline, fit_seconds = fit_final(
        best.model, winner.params, clean_train, train_set[LABEL].tolist(), p
    )
    predicted = pipeline[1:].predict(clean_test)
    y_test = test_set[LABEL].astype(str).to_numpy()
    classes = [str(c) for c in pipeline.classes_]
    metrics = evaluate(y_test, predicted)
    artifacts = write_reports(out_dir, y_test, predicted, classes)
    with open(out_dir / PIPELINE_FILE, "wb") as file:
        pickle.dump(pipeline, file, protocol=pickle.HIGHEST_PROTOCOL)
    artifacts += [trials_table, out_dir / PIPELINE_FILE]

    model = to_onnx(pipeline)
    onnx_labels = predict(session(model), test_set[TEXT].tolist())
    agreement = float(np.mean(onnx_labels == predicted)) if len(predicted) else 1.0
    if agreement < p.min_onnx_agreement:
        raise OnnxExportError(
            f"the ONNX model agrees with scikit-learn on {agreement:.2%} of the test rows, "
            f"below min_onnx_agreement {p.min_onnx_agreement:.2%}"
        )
    metadata = {
        "classes": json.dumps(classes),
        "model": best.model,
        "input": f"{INPUT_NAME}: raw texts, string [N, 1] (missing text: pass '')",
        "output": f"{LABEL_OUTPUT}: class [N]; {SCORE_OUTPUT}: the class's score [N]",
        "score": "probability" if hasattr(pipeline[-1], "predict_proba") else "decision",
    }
    set_metadata(model, metadata)
    metrics.update(
        {
            "onnx_agreement": agreement,
            "zoo_best_f1_macro": best.metrics["f1_macro"],
            "tuned_f1_macro_subset": winner.metrics["f1_macro"],
            "search_seconds": round(search_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
        }
    )
    return TrainResult(
        model=model,
        flavor="onnx",
        metrics=metrics,
        params={
            "model": best.model,
            **readable_params(winner.params),
            "tuned_by": winner.name,
            "zoo": ",".join(p.zoo),
            "tuning_trials": p.tuning_trials,
            "classes": classes,
            "train_rows": len(train_set),
            "test_rows": len(test_set),
            "train_subset_rows": len(subsets.train),
            "test_subset_rows": len(subsets.test),
        },
        artifacts=artifacts,
        input_example=pd.DataFrame({INPUT_NAME: test_set[TEXT].head(3).tolist()}),
        log_model_options={
            "onnx_execution_providers": ["CPUExecutionProvider"],
            "metadata": metadata,
        },
        children=[_child(f, "zoo") for f in zoo] + [_child(t, "trial") for t in trials],
    )


def _subsets(
    train_set: pd.DataFrame, test_set: pd.DataFrame, clean_train: list[str], clean_test: list[str]
) -> Texts:
    """The tuning subsets; a set whose subset is too small to score on is used whole."""

    def pick(
        frame: pd.DataFrame, cleaned: list[str], min_labels: int
    ) -> tuple[list[str], list[str]]:
        mask = frame[SUBSET].to_numpy(dtype=bool)
        if frame[LABEL][mask].nunique() < min_labels:
            mask = np.ones(len(frame), dtype=bool)
        return (
            [text for text, keep in zip(cleaned, mask, strict=True) if keep],
            frame[LABEL].astype(str)[mask].tolist(),
        )

    train_texts, train_labels = pick(train_set, clean_train, 2)
    test_texts, test_labels = pick(test_set, clean_test, 1)
    return Texts(train_texts, train_labels, test_texts, test_labels)


def run_parallel(
    tasks: Sequence[tuple[Callable[..., Fitted], tuple[Any, ...]]], ctx: RecipeContext
) -> Iterator[Fitted]:
    """Results as they finish, on up to ``ctx.max_workers`` processes; a cancelled run stops
    at the next result (the pending tasks are dropped)."""
    if not tasks:
        return
    from joblib import Parallel, delayed

    workers = min(ctx.max_workers, len(tasks))
    with Parallel(n_jobs=workers, return_as="generator_unordered") as parallel:
        for result in parallel(delayed(function)(*args) for function, args in tasks):
            ctx.check_cancelled()
            yield result


def fit_and_score(
    name: str,
    model: ModelName,
    settings: dict[str, Any],
    texts: Texts,
    p: TextClassificationParams,
    artifact: Path | None,
) -> Fitted:
    """Fit ``model`` with ``settings`` on the train subset and score it on the test subset.

    A model that cannot be fitted with these settings (e.g. ``min_df`` leaves no words) is a
    result with its error, not a failed stage."""
    import warnings

    pipeline = member(model, seed=p.seed, max_features=p.max_features)
    pipeline.set_params(**settings)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings of a bad trial
            pipeline.fit(texts.train, texts.train_labels)
            fit_seconds = time.perf_counter() - started
            predicted = pipeline.predict(texts.test)
    except (ValueError, MemoryError) as exc:
        return Fitted(name, model, settings, error=f"{type(exc).__name__}: {exc}")
    metrics = evaluate(np.asarray(texts.test_labels), predicted)
    metrics["fit_seconds"] = round(fit_seconds, 4)
    if artifact is not None:
        full = _with_cleaner(pipeline)
        with open(artifact, "wb") as file:
            pickle.dump(full, file, protocol=pickle.HIGHEST_PROTOCOL)
    return Fitted(name, model, settings, metrics, artifact=artifact)


def fit_final(
    model: ModelName,
    settings: dict[str, Any],
    clean_train: list[str],
    labels: list[str],
    p: TextClassificationParams,
) -> tuple[Any, float]:
    """The final pipeline (cleaner + TF-IDF + classifier) fitted on all the training rows."""
    pipeline = member(model, seed=p.seed, max_features=p.max_features)
    pipeline.set_params(**settings)
    started = time.perf_counter()
    pipeline.fit(clean_train, [str(label) for label in labels])
    return _with_cleaner(pipeline), time.perf_counter() - started


def _with_cleaner(fitted: Any) -> Any:
    """Prepend the (stateless) cleaner to a pipeline fitted on cleaned text: it takes raw text."""
    from sklearn.pipeline import Pipeline

    return Pipeline([("clean", TextCleaner()), *fitted.steps])


def evaluate(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    metrics = {"accuracy": float(accuracy_score(y_true, y_pred))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        metrics.update(
            {
                f"precision_{average}": float(precision),
                f"recall_{average}": float(recall),
                f"f1_{average}": float(f1),
            }
        )
    return metrics


def write_trials(path: Path, trials: Iterable[Fitted]) -> Path:
    rows = [
        {
            "trial": t.name,
            "model": t.model,
            **{f"param_{k}": v for k, v in readable_params(t.params).items()},
            **t.metrics,
            "error": t.error or "",
        }
        for t in trials
    ]
    pd.DataFrame(rows, columns=None if rows else ["trial", "model", "error"]).to_csv(
        path, index=False
    )
    return path


def write_reports(
    out_dir: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> list[Path]:
    from sklearn.metrics import classification_report

    labels = sorted(set(classes) | set(map(str, y_true)))
    report = classification_report(y_true, y_pred, labels=labels, output_dict=True, zero_division=0)
    text = classification_report(y_true, y_pred, labels=labels, zero_division=0)
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / REPORT_TEXT).write_text(str(text))
    return [
        out_dir / REPORT_JSON,
        out_dir / REPORT_TEXT,
        write_confusion_matrix(out_dir / CONFUSION_MATRIX_FILE, y_true, y_pred, labels),
    ]


def write_confusion_matrix(
    path: Path, y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str]
) -> Path:
    """Counts as a heatmap: rows are the true labels, columns the predicted ones."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(y_true, y_pred, labels=list(labels))
    n = len(labels)
    side = max(4.0, 0.6 * n + 2.5)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(labels))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    total = int(counts.sum())
    accuracy = float(counts.trace() / total) if total else 0.0
    axes.set_title(f"Confusion matrix ({total} texts, accuracy {accuracy:.3f})")
    threshold = counts.max() / 2 if counts.max() else 1
    for i in range(n):
        for j in range(n):
            colour = "white" if counts[i, j] > threshold else "black"
            axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _child(fitted: Fitted, kind: str) -> ChildRun:
    tags = {"kind": kind, "model": fitted.model}
    if fitted.error:
        tags["error"] = fitted.error[:500]
    return ChildRun(
        name=f"{kind}/{fitted.name}",
        params=readable_params(fitted.params),
        metrics=fitted.metrics,
        artifacts=[fitted.artifact] if fitted.artifact else [],
        tags=tags,
    )
