"""Reusable train/validation split strategies over pandas DataFrames.

Every strategy returns a ``Split(train, validation)`` whose frames are row subsets of the input:
original index labels kept and rows in their original order, each input row on exactly one
side. Bad arguments raise ``SplitError`` (a ``ValueError``) saying what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd


class SplitError(ValueError):
    """The split cannot be made with these arguments on this data."""


class Split(NamedTuple):
    train: pd.DataFrame
    validation: pd.DataFrame


SplitStrategy = Callable[[pd.DataFrame], Split]


def no_split(df: pd.DataFrame) -> Split:
    """Everything is training data (unsupervised recipes); validation is empty, same columns."""
    return Split(df.copy(), df.iloc[0:0].copy())


def random_split(df: pd.DataFrame, validation_fraction: float, seed: int) -> Split:
    """A seeded random split; each side gets at least one row, so ``df`` needs two or more."""
    if not 0.0 < validation_fraction < 1.0:
        raise SplitError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    n = len(df)
    if n < 2:
        raise SplitError(f"random_split needs at least 2 rows to fill both sides, got {n}")
    n_validation = min(max(round(n * validation_fraction), 1), n - 1)
    rng = np.random.default_rng(seed)
    in_validation = np.zeros(n, dtype=bool)
    in_validation[rng.permutation(n)[:n_validation]] = True
    return _by_mask(df, in_validation)


def stratified_kfold_split(
    df: pd.DataFrame, label_column: str, n_splits: int, fold: int, seed: int
) -> Split:
    """Fold ``fold`` (0-based) of a shuffled stratified k-fold: that fold is the validation set.

    Every label needs at least ``n_splits`` rows, so each fold sees every label.
    """
    from sklearn.model_selection import StratifiedKFold

    if label_column not in df.columns:
        raise SplitError(
            f"label column {label_column!r} not found; columns are {list(map(str, df.columns))}"
        )
    if n_splits < 2:
        raise SplitError(f"n_splits must be at least 2, got {n_splits}")
    if not 0 <= fold < n_splits:
        raise SplitError(f"fold must be in 0..{n_splits - 1} for n_splits={n_splits}, got {fold}")
    labels = df[label_column]
    missing = int(labels.isna().sum())
    if missing:
        raise SplitError(f"label column {label_column!r} has {missing} missing value(s)")
    counts = labels.value_counts()
    too_small = counts[counts < n_splits]
    if not too_small.empty:
        described = ", ".join(f"{label!r} ({count} rows)" for label, count in too_small.items())
        raise SplitError(
            f"stratified {n_splits}-fold split needs at least {n_splits} rows per label in "
            f"{label_column!r}; too few for: {described}"
        )
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    positions = np.arange(len(df))
    _, validation_positions = list(folds.split(positions, labels.to_numpy()))[fold]
    in_validation = np.zeros(len(df), dtype=bool)
    in_validation[validation_positions] = True
    return _by_mask(df, in_validation)


def _default_then_split(df: pd.DataFrame) -> Split:
    return random_split(df, validation_fraction=0.2, seed=0)


def forced_membership(
    df: pd.DataFrame,
    key_column: str,
    train_keys: Iterable[Hashable],
    validation_keys: Iterable[Hashable],
    then_split: SplitStrategy = _default_then_split,
) -> Split:
    """Rows whose ``key_column`` value is listed go to that side; ``then_split`` splits the rest.

    Typical use: pin a golden evaluation set (``validation_keys``) or known-good examples
    (``train_keys``) across retrainings. ``then_split`` defaults to a 20 % random split with
    seed 0; it is not called when no rows are left. Keys not present in ``df`` are ignored.
    """
    if key_column not in df.columns:
        raise SplitError(
            f"key column {key_column!r} not found; columns are {list(map(str, df.columns))}"
        )
    train_set = set(train_keys)
    validation_set = set(validation_keys)
    both = train_set & validation_set
    if both:
        listed = ", ".join(sorted(map(repr, both))[:10])
        raise SplitError(f"{len(both)} key(s) listed for both train and validation: {listed}")
    keys = df[key_column]
    forced_train = keys.isin(list(train_set)).to_numpy()
    forced_validation = keys.isin(list(validation_set)).to_numpy()
    rest_positions = np.flatnonzero(~(forced_train | forced_validation))

    in_validation = forced_validation.copy()
    if len(rest_positions):
        marker = _unused_column_name(df)
        rest = df.iloc[rest_positions].assign(**{marker: rest_positions})
        result = then_split(rest)
        rest_train = result.train[marker].to_numpy()
        rest_validation = result.validation[marker].to_numpy()
        sides = np.concatenate([rest_train, rest_validation])
        if len(sides) != len(rest_positions) or set(sides.tolist()) != set(rest_positions.tolist()):
            raise SplitError("then_split must put every row it is given on exactly one side")
        in_validation[rest_validation.astype(int)] = True
    return _by_mask(df, in_validation)


def _by_mask(df: pd.DataFrame, in_validation: np.ndarray) -> Split:
    return Split(df.iloc[np.flatnonzero(~in_validation)], df.iloc[np.flatnonzero(in_validation)])


def _unused_column_name(df: pd.DataFrame) -> str:
    name = "__split_row__"
    while name in df.columns:
        name += "_"
    return name
