"""Scoring on held-out rows, as the team's ``evaluate`` and ``write_results`` did.

ROC-AUC and accuracy, and per class (ABSENT, PRESENT) precision, recall, F1 and support, with
their macro and weighted averages (scikit-learn's ``classification_report``). A row is
predicted PRESENT when its presence probability is at least 0.5. Written as ``metrics.json``,
a confusion-matrix heatmap and a classification-report heatmap (matplotlib, Agg backend: no
display, no global pyplot state).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from recipes.species_distribution.dataset import CLASS_NAMES

THRESHOLD = 0.5
METRICS_FILE = "metrics.json"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
REPORT_FILE = "classification_report.png"
_AVERAGES = {"macro avg": "macro", "weighted avg": "weighted"}
_MEASURES = {"precision": "precision", "recall": "recall", "f1-score": "f1", "support": "support"}


def evaluate(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """The report: ``roc_auc``, ``accuracy``, one entry per class and per average."""
    from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

    y_pred = (probabilities >= THRESHOLD).astype(int)
    report: dict[str, Any] = classification_report(
        y_true,
        y_pred,
        labels=[0, 1],
        target_names=list(CLASS_NAMES),
        output_dict=True,
        zero_division=0,
    )
    return {
        "roc_auc": float(roc_auc_score(y_true, probabilities)),
        "accuracy": float(report.pop("accuracy", np.mean(y_true == y_pred))),
        **{name: _plain_scores(report[name]) for name in (*CLASS_NAMES, *_AVERAGES)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
        "threshold": THRESHOLD,
        "rows": len(y_true),
    }


def flat_metrics(report: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """MLflow metric names: ``roc_auc``, ``precision_present``, ``f1_macro`` ..."""
    metrics = {f"{prefix}roc_auc": report["roc_auc"], f"{prefix}accuracy": report["accuracy"]}
    for name in (*CLASS_NAMES, *_AVERAGES):
        suffix = _AVERAGES.get(name, name.lower())
        for measure, short in _MEASURES.items():
            metrics[f"{prefix}{short}_{suffix}"] = float(report[name][measure])
    return metrics


def write_metrics(out_dir: Path, content: dict[str, Any]) -> Path:
    path = out_dir / METRICS_FILE
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def write_confusion_matrix(out_dir: Path, report: dict[str, Any], title: str) -> Path:
    counts = np.asarray(report["confusion_matrix"])
    figure, axes = _figure((5.5, 4.5))
    shown = axes.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(2), labels=list(CLASS_NAMES))
    axes.set_yticks(range(2), labels=list(CLASS_NAMES))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title}\n{counts.sum()} rows, accuracy {report['accuracy']:.3f}")
    _annotate(axes, counts, [[str(int(v)) for v in row] for row in counts])
    return _save(figure, out_dir / CONFUSION_MATRIX_FILE)


def write_report_heatmap(out_dir: Path, report: dict[str, Any], title: str) -> Path:
    rows = [*CLASS_NAMES, *_AVERAGES]
    columns = ["precision", "recall", "f1-score"]
    values = np.array([[report[row][column] for column in columns] for row in rows])
    figure, axes = _figure((6.0, 4.0))
    shown = axes.imshow(values, cmap="RdYlGn", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(len(columns)), labels=columns)
    labels = [f"{row} ({int(report[row]['support'])})" for row in rows]
    axes.set_yticks(range(len(rows)), labels=labels)
    axes.set_title(f"{title}\nROC-AUC {report['roc_auc']:.3f}")
    _annotate(axes, values, [[f"{v:.3f}" for v in row] for row in values], dark_above=None)
    return _save(figure, out_dir / REPORT_FILE)


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _annotate(
    axes: Any, values: np.ndarray, texts: list[list[str]], dark_above: float | None = 0.5
) -> None:
    threshold = None if dark_above is None else values.max() * dark_above
    for i, row in enumerate(texts):
        for j, text in enumerate(row):
            light = threshold is not None and values[i, j] > threshold
            axes.text(j, i, text, ha="center", va="center", color="white" if light else "black")


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path)
    return path


def _plain_scores(scores: dict[str, Any]) -> dict[str, float]:
    return {measure: float(scores[measure]) for measure in _MEASURES}
