"""The registered model: raw feature rows -> presence probability.

One scikit-learn ``Pipeline``::

    features (FeatureFrame)  ->  classifier (lightgbm.LGBMClassifier)

``FeatureFrame`` makes a raw batch what LightGBM was trained on: the trained columns in the
trained order (others ignored, missing ones an error), numbers as float64 whether the batch
holds them as integers, floats or numeric text, and the categorical columns as pandas
categories with the training categories (an unseen category is a missing value, which
LightGBM routes like one). So ``predict_proba`` takes rows as they come from a features table,
text categories and integer columns included. The model is logged with the sklearn flavour
and ``pyfunc_predict_fn="predict_proba"``: ``mlflow.pyfunc`` returns, per row,
``[P(ABSENT), P(PRESENT)]``.

This module imports only numpy, pandas and scikit-learn (LightGBM is passed in), so a saved
model loads wherever it is importable; fitted attributes are plain lists for the skops format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline


class FeatureFrame(TransformerMixin, BaseEstimator):
    """Selects and types the feature columns of raw rows (see the module docstring)."""

    def __init__(
        self, columns: Sequence[str] = (), categorical_columns: Sequence[str] = ()
    ) -> None:
        self.columns = columns
        self.categorical_columns = categorical_columns

    def fit(self, X: Any, y: Any = None) -> FeatureFrame:
        frame = _as_frame(X, list(self.columns))
        unknown = [c for c in self.categorical_columns if c not in self.columns]
        if unknown:
            raise ValueError(f"categorical columns {unknown} are not among the columns")
        self.columns_: list[str] = list(self.columns)
        self.categorical_: list[str] = [c for c in self.columns if c in self.categorical_columns]
        self.categories_: list[list[str]] = [
            sorted(set(_category_text(frame[c]).dropna())) for c in self.categorical_
        ]
        self.n_features_in_ = len(self.columns_)
        return self

    def transform(self, X: Any) -> pd.DataFrame:
        frame = _as_frame(X, self.columns_)
        out: dict[str, Any] = {}
        categories = dict(zip(self.categorical_, self.categories_, strict=True))
        for column in self.columns_:
            values = frame[column]
            if column in categories:
                text = _category_text(values)
                known = text.where(text.isin(categories[column]))  # unseen: missing
                out[column] = pd.Categorical(known, categories=categories[column])
            else:
                out[column] = _numbers(values, column)
        return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(self.columns_, dtype=object)


def build_model(
    columns: Sequence[str], categorical_columns: Sequence[str], classifier: Any
) -> Pipeline:
    """The unfitted pipeline around a ``LGBMClassifier``."""
    return Pipeline(
        [
            ("features", FeatureFrame(list(columns), list(categorical_columns))),
            ("classifier", classifier),
        ]
    )


def _as_frame(X: Any, columns: list[str]) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        array = np.asarray(X, dtype=object)
        if array.ndim != 2 or array.shape[1] != len(columns):
            raise ValueError(
                f"expected a DataFrame or rows of {len(columns)} values {columns}, got shape "
                f"{array.shape}"
            )
        return pd.DataFrame(array, columns=columns)
    frame = X.rename(columns=str)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"missing feature column(s) {missing}; the model needs {columns}")
    return frame.reset_index(drop=True)


def _numbers(values: pd.Series, column: str) -> pd.Series:
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    text = values.astype("string").str.strip()
    text = text.mask(text == "")
    parsed = pd.to_numeric(text, errors="coerce")
    bad = text.notna() & parsed.isna()
    if bad.any():
        first = values[bad.to_numpy()].iloc[0]
        raise ValueError(f"feature column {column!r} is numeric, got {first!r}")
    return parsed.astype("float64")


def _category_text(values: pd.Series) -> pd.Series:
    """Categories as text; whole numbers without a decimal point, so a land-cover code 10
    matches whether a batch holds it as 10, 10.0 or "10"."""

    def text(value: Any) -> str:
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        return str(value).strip()

    out = values.map(text, na_action="ignore").astype("string")
    return out.mask(out == "")


# Types a skops load must trust for a fitted model (scikit-learn's own are trusted already).
SKOPS_TRUSTED_TYPES: tuple[str, ...] = (
    f"{FeatureFrame.__module__}.{FeatureFrame.__qualname__}",
    "lightgbm.sklearn.LGBMClassifier",
    "lightgbm.basic.Booster",
    "collections.OrderedDict",
)
