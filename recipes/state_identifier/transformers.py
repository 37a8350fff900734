"""The preprocessing steps of the state identifier, as scikit-learn transformers.

The fitted pipeline takes a raw frame of sensor readings (one row per timestamp, gaps allowed,
an optional timestamp column that is ignored) and returns one feature row per window::

    select -> fill -> summarise -> window -> features -> scale  (-> kmeans)

Fitted attributes are plain lists, floats and numpy arrays (no pandas objects) so the model can
be saved in the skops format as well as with (cloud)pickle. This module imports only numpy,
pandas and scikit-learn, so a saved model loads wherever this module is importable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.base import BaseEstimator, TransformerMixin


class ColumnSelector(TransformerMixin, BaseEstimator):
    """Keeps the sensor columns seen in ``fit`` (in that order) as float, drops the timestamp.

    ``transform`` needs every fitted column and ignores any other; a numpy array is accepted
    when it has exactly the fitted columns in the fitted order.
    """

    def __init__(self, timestamp_column: str | None = "timestamp") -> None:
        self.timestamp_column = timestamp_column

    def fit(self, X: Any, y: Any = None) -> ColumnSelector:
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"fit needs a pandas DataFrame of sensor readings, got {type(X)}")
        columns = [str(c) for c in X.columns if c != self.timestamp_column]
        if not columns:
            raise ValueError("no sensor columns: the frame has only the timestamp column")
        self.columns_: list[str] = columns
        self.n_features_in_ = len(columns)
        _as_float_frame(X.rename(columns=str), columns)
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            frame = X.rename(columns=str)
            missing = [c for c in self.columns_ if c not in frame.columns]
            if missing:
                raise ValueError(f"missing sensor column(s) {missing}; expected {self.columns_}")
        else:
            array = np.asarray(X)
            if array.ndim != 2 or array.shape[1] != len(self.columns_):
                raise ValueError(
                    f"expected a DataFrame or a 2-D array with {len(self.columns_)} columns "
                    f"{self.columns_}, got shape {array.shape}"
                )
            frame = pd.DataFrame(array, columns=self.columns_)
        return _as_float_frame(frame, self.columns_)


def _as_float_frame(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    out = {}
    for column in columns:
        values = frame[column]
        try:
            out[column] = pd.to_numeric(values, errors="raise").astype("float64")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"sensor column {column!r} is not numeric: {exc}") from exc
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


class FillMissing(TransformerMixin, BaseEstimator):
    """Fills gaps along time: ``interpolate`` (linear), ``ffill`` or ``bfill``.

    Leading/trailing gaps are then filled from the nearest reading, and a column with no
    reading at all in the batch gets its training mean.
    """

    def __init__(self, method: str = "interpolate") -> None:
        self.method = method

    def fit(self, X: pd.DataFrame, y: Any = None) -> FillMissing:
        if self.method not in ("interpolate", "ffill", "bfill"):
            raise ValueError(f"unknown fill method {self.method!r}")
        means = X.mean(axis=0, skipna=True)
        self.fill_values_: list[float] = [
            float(v) if np.isfinite(v) else 0.0 for v in means.to_numpy(dtype="float64")
        ]
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        frame = X.astype("float64")
        if self.method == "interpolate":
            frame = frame.interpolate(method="linear", limit_direction="both")
        # Whatever is left (edges, or everything for ffill/bfill) comes from the nearest reading.
        frame = frame.bfill().ffill() if self.method == "bfill" else frame.ffill().bfill()
        return frame.fillna(dict(zip(frame.columns, self.fill_values_, strict=True)))


class ColumnSummariser(TransformerMixin, BaseEstimator):
    """Drops uninformative columns and adds row-wise summaries across sensors.

    - ``drop_constant``: columns with a single value in the training data;
    - ``drop_duplicates``: columns equal to an earlier kept column;
    - ``row_summaries``: ``row_mean`` and ``row_std`` of the sensors standardised with the
      training mean/std (an overall "load level" and how unevenly it is spread); needs two or
      more kept sensors.
    """

    def __init__(
        self, drop_constant: bool = True, drop_duplicates: bool = True, row_summaries: bool = True
    ) -> None:
        self.drop_constant = drop_constant
        self.drop_duplicates = drop_duplicates
        self.row_summaries = row_summaries

    def fit(self, X: pd.DataFrame, y: Any = None) -> ColumnSummariser:
        kept: list[str] = []
        dropped: dict[str, str] = {}
        for column in X.columns:
            values = X[column].to_numpy(dtype="float64")
            if self.drop_constant and np.unique(values[~np.isnan(values)]).size <= 1:
                dropped[column] = "constant"
                continue
            if self.drop_duplicates:
                twin = next(
                    (k for k in kept if np.array_equal(X[k].to_numpy(), values, equal_nan=True)),
                    None,
                )
                if twin is not None:
                    dropped[column] = f"duplicate of {twin}"
                    continue
            kept.append(column)
        if not kept:
            raise ValueError(f"no informative sensor column left; dropped {dropped}")
        self.kept_columns_: list[str] = kept
        self.dropped_columns_: dict[str, str] = dropped
        self.add_summaries_: bool = bool(self.row_summaries) and len(kept) >= 2
        selected = X[kept].to_numpy(dtype="float64")
        self.center_ = np.nanmean(selected, axis=0)
        scale = np.nanstd(selected, axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        summaries = ["row_mean", "row_std"] if self.add_summaries_ else []
        self.columns_out_: list[str] = kept + [_unique_name(s, kept) for s in summaries]
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> pd.DataFrame:
        frame = X[self.kept_columns_]
        if not self.add_summaries_:
            return frame
        z = (frame.to_numpy(dtype="float64") - self.center_) / self.scale_
        out = frame.copy()
        mean_name, std_name = self.columns_out_[-2:]
        out[mean_name] = z.mean(axis=1)
        out[std_name] = z.std(axis=1)
        return out


def _unique_name(name: str, taken: Sequence[str]) -> str:
    while name in taken:
        name = "_" + name
    return name


def count_windows(n_rows: int, window_size: int, step: int) -> int:
    """How many full windows ``n_rows`` rows give (window ``i`` starts at row ``i * step``)."""
    return 0 if n_rows < window_size else 1 + (n_rows - window_size) // step


class Windower(TransformerMixin, BaseEstimator):
    """Cuts rows into windows of ``window_size`` rows, one starting every ``step`` rows.

    Output shape is ``(n_windows, window_size, n_columns)``; rows after the last full window
    are not used.
    """

    def __init__(self, window_size: int = 30, step: int = 30) -> None:
        self.window_size = window_size
        self.step = step

    def fit(self, X: Any, y: Any = None) -> Windower:
        if self.window_size < 2 or self.step < 1:
            raise ValueError(
                f"window_size must be >= 2 and step >= 1, got {self.window_size}, {self.step}"
            )
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        array = np.asarray(X, dtype="float64")
        if array.shape[0] < self.window_size:
            raise ValueError(
                f"need at least window_size={self.window_size} rows to form one window, "
                f"got {array.shape[0]}"
            )
        windows = sliding_window_view(array, self.window_size, axis=0)[:: self.step]
        return np.ascontiguousarray(windows.transpose(0, 2, 1))


class WindowFeatures(TransformerMixin, BaseEstimator):
    """Summarises each window per column: one block of columns per feature, in order.

    Features: ``mean``, ``std``, ``min``, ``max``, ``range`` (max - min), ``slope`` (least-squares
    trend per row), ``last``. Output column ``f * n_columns + c`` is feature ``f`` of column ``c``.
    """

    FEATURES = ("mean", "std", "min", "max", "range", "slope", "last")

    def __init__(self, features: Sequence[str] = ("mean", "min", "max")) -> None:
        self.features = features

    def fit(self, X: Any, y: Any = None) -> WindowFeatures:
        unknown = [f for f in self.features if f not in self.FEATURES]
        if unknown or not self.features:
            raise ValueError(f"unknown window features {unknown}; choose from {self.FEATURES}")
        self.n_features_in_ = np.asarray(X).shape[-1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        windows = np.asarray(X, dtype="float64")
        if windows.ndim != 3:
            raise ValueError(f"expected windows of shape (n, window, columns), got {windows.shape}")
        blocks = [_window_feature(windows, name) for name in self.features]
        return np.concatenate(blocks, axis=1)

    def feature_names(self, columns: Sequence[str]) -> list[str]:
        return [f"{column}__{feature}" for feature in self.features for column in columns]


def _window_feature(windows: np.ndarray, name: str) -> np.ndarray:
    if name == "mean":
        return windows.mean(axis=1)
    if name == "std":
        return windows.std(axis=1)
    if name == "min":
        return windows.min(axis=1)
    if name == "max":
        return windows.max(axis=1)
    if name == "range":
        return windows.max(axis=1) - windows.min(axis=1)
    if name == "last":
        return windows[:, -1, :]
    if name == "slope":
        t = np.arange(windows.shape[1], dtype="float64")
        t -= t.mean()
        return np.einsum("t,ntc->nc", t, windows) / float(t @ t)
    raise ValueError(f"unknown window feature {name!r}")


# Types a skops load must trust for a fitted state identifier pipeline (scikit-learn's own
# types are trusted by default).
SKOPS_TRUSTED_TYPES: tuple[str, ...] = tuple(
    f"{cls.__module__}.{cls.__qualname__}"
    for cls in (ColumnSelector, FillMissing, ColumnSummariser, Windower, WindowFeatures)
)
