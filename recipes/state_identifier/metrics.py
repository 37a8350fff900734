"""Clustering quality metrics (unsupervised: computed on the training windows themselves)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.metrics import silhouette_score as _silhouette_score


def _sample(
    n: int, max_rows: int | None, random_state: int | np.random.Generator | None
) -> np.ndarray:
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def dunn_index(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    max_rows: int | None = 2000,
    random_state: int | None = 0,
) -> float:
    """Smallest distance between points of different clusters over the largest cluster diameter.

    Greater is better (compact, well separated clusters). Exact pairwise distances are
    O(n^2) in time and memory, so above ``max_rows`` points the index is computed on a seeded
    uniform sample of ``max_rows`` points: an estimate that tends to be optimistic, since a
    sample can miss the closest cross-cluster pair and the farthest same-cluster pair.

    Returns ``inf`` when every cluster is a single point (zero diameter); needs two clusters.
    """
    X = np.asarray(X, dtype="float64")
    labels = np.asarray(labels)
    if X.ndim != 2 or len(X) != len(labels):
        raise ValueError(f"X must be 2-D with one label per row, got {X.shape} and {labels.shape}")
    rows = _sample(len(X), max_rows, random_state)
    X, labels = X[rows], labels[rows]
    if np.unique(labels).size < 2:
        raise ValueError("the Dunn index needs at least two clusters")
    distances = cdist(X, X)
    same = labels[:, None] == labels[None, :]
    max_diameter = float(distances[same].max())
    min_separation = float(distances[~same].min())
    if max_diameter == 0.0:
        return float("inf")
    return min_separation / max_diameter


def silhouette(
    X: np.ndarray,
    labels: np.ndarray,
    *,
    max_rows: int | None = 5000,
    random_state: int | None = 0,
) -> float:
    """Mean silhouette coefficient (-1..1, greater is better), on a sample above ``max_rows``."""
    X = np.asarray(X, dtype="float64")
    labels = np.asarray(labels)
    rows = _sample(len(X), max_rows, random_state)
    return float(_silhouette_score(X[rows], labels[rows]))
