from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recipes.splitting import (
    Split,
    SplitError,
    forced_membership,
    no_split,
    random_split,
    stratified_kfold_split,
)


def _frame(n: int = 100) -> pd.DataFrame:
    labels = np.array(["a", "b", "c", "d"])[np.arange(n) % 4]
    return pd.DataFrame(
        {"key": [f"k{i}" for i in range(n)], "x": np.arange(n, dtype=float), "label": labels},
        index=pd.RangeIndex(1000, 1000 + n),
    )


def _assert_partition(df: pd.DataFrame, split: Split) -> None:
    """Both sides are row subsets in original order that together hold every row once."""
    assert list(split.train.columns) == list(df.columns)
    assert list(split.validation.columns) == list(df.columns)
    together = list(split.train.index) + list(split.validation.index)
    assert sorted(together) == sorted(df.index)
    assert len(together) == len(set(together))
    for side in split:
        assert side.index.is_monotonic_increasing
        pd.testing.assert_frame_equal(side, df.loc[side.index])


def test_no_split_puts_everything_in_train() -> None:
    df = _frame(10)
    train, validation = no_split(df)
    pd.testing.assert_frame_equal(train, df)
    assert validation.empty
    assert list(validation.columns) == list(df.columns)


def test_random_split_sizes_and_partition() -> None:
    df = _frame(100)
    result = random_split(df, validation_fraction=0.2, seed=7)
    assert len(result.validation) == 20
    assert len(result.train) == 80
    _assert_partition(df, result)


def test_random_split_is_deterministic_per_seed() -> None:
    df = _frame(100)
    first = random_split(df, 0.3, seed=1)
    again = random_split(df, 0.3, seed=1)
    other = random_split(df, 0.3, seed=2)
    assert list(first.validation.index) == list(again.validation.index)
    assert list(first.validation.index) != list(other.validation.index)


def test_random_split_gives_each_side_a_row() -> None:
    df = _frame(10)
    assert len(random_split(df, 0.01, seed=0).validation) == 1
    assert len(random_split(df, 0.99, seed=0).train) == 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_random_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(SplitError, match="validation_fraction"):
        random_split(_frame(10), fraction, seed=0)


def test_random_split_needs_two_rows() -> None:
    with pytest.raises(SplitError, match="at least 2 rows"):
        random_split(_frame(1), 0.5, seed=0)


def test_split_error_is_a_value_error() -> None:
    assert issubclass(SplitError, ValueError)


def test_stratified_kfold_keeps_label_proportions() -> None:
    df = _frame(100)
    result = stratified_kfold_split(df, "label", n_splits=5, fold=2, seed=0)
    _assert_partition(df, result)
    assert len(result.validation) == 20
    assert result.validation["label"].value_counts().to_dict() == {
        "a": 5,
        "b": 5,
        "c": 5,
        "d": 5,
    }


def test_stratified_kfold_folds_cover_every_row_once() -> None:
    df = _frame(40)
    validations = [
        set(stratified_kfold_split(df, "label", n_splits=4, fold=f, seed=3).validation.index)
        for f in range(4)
    ]
    assert set().union(*validations) == set(df.index)
    assert sum(len(v) for v in validations) == len(df)


def test_stratified_kfold_names_a_label_with_too_few_rows() -> None:
    df = pd.concat(
        [_frame(40), pd.DataFrame({"key": ["r1", "r2"], "x": [0.0, 1.0], "label": ["rare"] * 2})],
        ignore_index=True,
    )
    with pytest.raises(SplitError, match=r"'rare' \(2 rows\)"):
        stratified_kfold_split(df, "label", n_splits=3, fold=0, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"label_column": "nope"}, "label column 'nope' not found"),
        ({"n_splits": 1}, "n_splits must be at least 2"),
        ({"fold": 5}, r"fold must be in 0\.\.4"),
        ({"fold": -1}, r"fold must be in 0\.\.4"),
    ],
)
def test_stratified_kfold_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"label_column": "label", "n_splits": 5, "fold": 0, "seed": 0}
    arguments.update(kwargs)
    with pytest.raises(SplitError, match=message):
        stratified_kfold_split(_frame(40), **arguments)  # type: ignore[arg-type]


def test_stratified_kfold_rejects_missing_labels() -> None:
    df = _frame(40)
    df.loc[1003, "label"] = None
    with pytest.raises(SplitError, match="1 missing value"):
        stratified_kfold_split(df, "label", n_splits=2, fold=0, seed=0)


def test_forced_membership_pins_listed_keys_and_splits_the_rest() -> None:
    df = _frame(100)
    result = forced_membership(df, "key", train_keys=["k0", "k1"], validation_keys=["k2", "k99"])
    _assert_partition(df, result)
    assert {"k0", "k1"} <= set(result.train["key"])
    assert {"k2", "k99"} <= set(result.validation["key"])
    # The other 96 rows go through the default 20 % random split.
    assert len(result.validation) == 2 + round(96 * 0.2)


def test_forced_membership_uses_then_split_for_the_rest() -> None:
    df = _frame(20)
    result = forced_membership(df, "key", [], ["k5"], then_split=no_split)
    assert list(result.validation["key"]) == ["k5"]
    assert len(result.train) == 19

    seen: list[int] = []

    def strategy(rest: pd.DataFrame) -> Split:
        seen.append(len(rest))
        return random_split(rest, 0.5, seed=0)

    result = forced_membership(df, "key", ["k0"], ["k1"], then_split=strategy)
    assert seen == [18]
    assert len(result.validation) == 1 + 9


def test_forced_membership_skips_then_split_when_nothing_is_left() -> None:
    df = _frame(3)

    def fail(rest: pd.DataFrame) -> Split:
        raise AssertionError("then_split must not be called")

    result = forced_membership(df, "key", ["k0", "k1"], ["k2"], then_split=fail)
    assert list(result.train["key"]) == ["k0", "k1"]
    assert list(result.validation["key"]) == ["k2"]


def test_forced_membership_works_with_a_duplicated_index() -> None:
    df = _frame(10).set_axis([0] * 10, axis=0)
    result = forced_membership(df, "key", ["k3"], ["k4"], then_split=no_split)
    assert list(result.validation["key"]) == ["k4"]
    assert list(result.train["key"]) == [f"k{i}" for i in range(10) if i != 4]


def test_forced_membership_ignores_keys_not_in_the_data() -> None:
    df = _frame(10)
    result = forced_membership(df, "key", ["missing"], ["k1", "gone"], then_split=no_split)
    assert list(result.validation["key"]) == ["k1"]
    assert len(result.train) == 9


def test_forced_membership_rejects_a_key_on_both_sides() -> None:
    with pytest.raises(SplitError, match="both train and validation: 'k1'"):
        forced_membership(_frame(10), "key", ["k0", "k1"], ["k1"])


def test_forced_membership_rejects_a_missing_key_column() -> None:
    with pytest.raises(SplitError, match="key column 'id' not found"):
        forced_membership(_frame(10), "id", [], [])


def test_forced_membership_rejects_a_then_split_that_loses_rows() -> None:
    def lossy(rest: pd.DataFrame) -> Split:
        return Split(rest.iloc[1:], rest.iloc[0:0])

    with pytest.raises(SplitError, match="exactly one side"):
        forced_membership(_frame(10), "key", [], ["k0"], then_split=lossy)
