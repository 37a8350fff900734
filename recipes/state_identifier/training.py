"""Split and train stages of the state identifier."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import recipes
import shared
from recipes.base import DatasetSummary, RecipeContext, RecipeParams, TrainResult
from recipes.splitting import no_split
from recipes.state_identifier.aggregate import TIMESERIES_FILE
from recipes.state_identifier.metrics import dunn_index, silhouette
from recipes.state_identifier.params import StateIdentifierParams, coerce_params
from recipes.state_identifier.transformers import (
    SKOPS_TRUSTED_TYPES,
    ColumnSelector,
    ColumnSummariser,
    FillMissing,
    Windower,
    WindowFeatures,
    count_windows,
)
from shared.errors import DataValidationError

TRAIN_FILE = "train.csv"
CLUSTER_PROFILE_FILE = "cluster_profile.json"
CLUSTER_PLOT_FILE = "clusters.png"

log = logging.getLogger(__name__)


def split(
    dataset_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    """Unsupervised: no validation set, all of ``timeseries.csv`` becomes ``train.csv``."""
    data = _read_csv(Path(dataset_dir) / TIMESERIES_FILE)
    train, validation = no_split(data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train.to_csv(out_dir / TRAIN_FILE, index=False)
    return DatasetSummary(
        rows=len(train),
        files=[TRAIN_FILE],
        details={"strategy": "none (unsupervised)", "validation_rows": len(validation)},
    )


def build_preprocessing(params: StateIdentifierParams) -> Pipeline:
    """Raw readings -> one scaled feature row per window (unfitted)."""
    return Pipeline(
        [
            ("select", ColumnSelector(timestamp_column=params.timestamp_column)),
            ("fill", FillMissing(method=params.fill_method)),
            (
                "summarise",
                ColumnSummariser(
                    drop_constant=params.drop_constant_columns,
                    drop_duplicates=params.drop_duplicate_columns,
                    row_summaries=params.row_summaries,
                ),
            ),
            ("window", Windower(window_size=params.window_size, step=params.step)),
            ("features", WindowFeatures(features=params.features)),
            ("scale", StandardScaler()),
        ]
    )


def train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    """Fits preprocessing + KMeans on all windows and scores the clustering on the same windows.

    The model is one ``Pipeline`` whose ``predict`` takes raw readings (gaps allowed, the
    timestamp column optional) and returns one cluster label per window.
    """
    p = coerce_params(params)
    train_path = Path(split_dir) / TRAIN_FILE
    data = _read_csv(train_path)
    n_windows = count_windows(len(data), p.window_size, p.step)
    if n_windows <= p.n_clusters:
        raise DataValidationError(
            f"{len(data)} rows give {n_windows} window(s) of {p.window_size} rows every "
            f"{p.step}; clustering into {p.n_clusters} states needs more than {p.n_clusters}",
            file=TRAIN_FILE,
        )

    preprocessing = build_preprocessing(p)
    try:
        features = preprocessing.fit_transform(data)
    except ValueError as exc:
        raise DataValidationError(f"preprocessing failed: {exc}", file=TRAIN_FILE) from exc
    kmeans = KMeans(
        n_clusters=p.n_clusters, n_init=p.n_init, max_iter=p.max_iter, random_state=p.random_state
    )
    labels = kmeans.fit_predict(features)
    found = int(np.unique(labels).size)
    if found < 2:
        raise DataValidationError(
            f"all {n_windows} windows fell into one cluster; the data has too few distinct "
            f"windows for {p.n_clusters} states",
            file=TRAIN_FILE,
        )
    model = Pipeline([*preprocessing.steps, ("kmeans", kmeans)])

    metrics = {
        "silhouette": silhouette(
            features, labels, max_rows=p.max_rows_for_silhouette, random_state=p.random_state
        ),
        "dunn_index": dunn_index(
            features, labels, max_rows=p.max_rows_for_dunn, random_state=p.random_state
        ),
        "inertia": float(kmeans.inertia_),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summariser: ColumnSummariser = preprocessing.named_steps["summarise"]
    feature_step: WindowFeatures = preprocessing.named_steps["features"]
    feature_names = feature_step.feature_names(summariser.columns_out_)
    unscaled = preprocessing[:-1].transform(data)
    artifacts = [_write_profile(out_dir, labels, unscaled, feature_names, p)]
    plot = _write_plot(out_dir, features, labels) if p.cluster_plot else None
    if plot is not None:
        artifacts.append(plot)

    sensor_columns = [c for c in data.columns if c != p.timestamp_column]
    example_rows = min(len(data), 2 * p.window_size)
    # Doubles in the signature: served batches may carry NaNs or whole-number readings.
    input_example = (
        data[sensor_columns].iloc[:example_rows].reset_index(drop=True).astype("float64")
    )
    return TrainResult(
        model=model,
        flavor="sklearn",
        metrics=metrics,
        params={
            **p.model_dump(mode="json"),
            "rows": len(data),
            "windows": n_windows,
            "sensor_columns": sensor_columns,
            "dropped_columns": summariser.dropped_columns_,
            "n_features": len(feature_names),
            "clusters_found": found,
        },
        artifacts=artifacts,
        input_example=input_example,
        log_model_options={
            # MLflow's default skops format only loads types it is told to trust.
            "skops_trusted_types": list(SKOPS_TRUSTED_TYPES),
            # The transformers travel with the model, so it loads where retrainer is not installed.
            "code_paths": [str(Path(package.__path__[0])) for package in (recipes, shared)],
        },
    )


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"expected {path.name} in the stage input", file=path.name)
    # Timestamps stay text: the split copies them as written and the model ignores them.
    return pd.read_csv(path)


def _write_profile(
    out_dir: Path,
    labels: np.ndarray,
    unscaled: np.ndarray,
    feature_names: list[str],
    p: StateIdentifierParams,
) -> Path:
    """Per cluster: how many windows, and the mean of each sensor's window means (real units)."""
    mean_columns = [i for i, name in enumerate(feature_names) if name.endswith("__mean")]
    clusters: dict[str, Any] = {}
    for label in np.unique(labels):
        members = labels == label
        clusters[str(int(label))] = {
            "windows": int(members.sum()),
            "fraction": round(float(members.mean()), 4),
            "mean": {
                feature_names[i].removesuffix("__mean"): round(
                    float(unscaled[members, i].mean()), 4
                )
                for i in mean_columns
            },
        }
    path = out_dir / CLUSTER_PROFILE_FILE
    content = {"window_size": p.window_size, "step": p.step, "clusters": clusters}
    path.write_text(json.dumps(content, indent=2) + "\n")
    return path


def _write_plot(out_dir: Path, features: np.ndarray, labels: np.ndarray) -> Path | None:
    """The windows on their first two principal components, coloured by cluster."""
    if features.shape[1] < 2:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from sklearn.decomposition import PCA

    points = PCA(n_components=2).fit_transform(features)
    figure = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label in np.unique(labels):
        members = labels == label
        axes.scatter(points[members, 0], points[members, 1], s=12, label=f"cluster {label}")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.set_title("State identifier: windows by cluster")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    path = out_dir / CLUSTER_PLOT_FILE
    figure.savefig(path)
    return path
