"""Split: the labelled data set -> stratified, seeded train / test (/ validation) tables.

Both classes keep their share on every side (``sklearn.model_selection.train_test_split``
with ``stratify``), so a rare species is still scored on some presences. ``test_fraction``
of the rows are the test set; ``validation_fraction`` (0 by default, as in the team's
pipeline) more are held out as a validation set, scored beside test. The split folder is
self-contained: the tables plus ``dataset.json`` and the search space, because the train
stage receives only this folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.species_distribution.dataset import (
    CLASS_NAMES,
    DATASET_FILE,
    SCHEMA_FILE,
    SEARCH_SPACE_FILE,
    TEST_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    DatasetSchema,
    read_table,
)
from recipes.species_distribution.params import coerce_params
from shared.errors import DataValidationError


def split(
    dataset_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    p = coerce_params(params)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    schema = DatasetSchema.read(dataset_dir)
    data = read_table(dataset_dir, DATASET_FILE)
    target = schema.target_column
    labels = data[target]
    held_out_share = p.test_fraction + p.validation_fraction
    train, held_out = _stratified(data, labels, held_out_share, p.seed, "train and held-out")
    sides: dict[str, pd.DataFrame] = {"train": train}
    if p.validation_fraction > 0:
        test, validation = _stratified(
            held_out,
            held_out[target],
            p.validation_fraction / held_out_share,
            p.seed,
            "test and validation",
        )
        sides.update(test=test, validation=validation)
    else:
        sides["test"] = held_out

    out_dir.mkdir(parents=True, exist_ok=True)
    names = {"train": TRAIN_FILE, "test": TEST_FILE, "validation": VALIDATION_FILE}
    for side, frame in sides.items():
        frame.sort_index().to_parquet(out_dir / names[side], index=False)
    shutil.copyfile(dataset_dir / SCHEMA_FILE, out_dir / SCHEMA_FILE)
    if (dataset_dir / SEARCH_SPACE_FILE).is_file():
        shutil.copyfile(dataset_dir / SEARCH_SPACE_FILE, out_dir / SEARCH_SPACE_FILE)
    counts = {
        side: {"rows": len(frame), "present": int(frame[target].sum())}
        for side, frame in sides.items()
    }
    return DatasetSummary(
        rows=len(data),
        files=[names[side] for side in sides],
        details={"strategy": "stratified random", "seed": p.seed, **counts},
    )


def _stratified(
    data: pd.DataFrame, labels: pd.Series, share: float, seed: int, sides: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A stratified split; too few rows of a class is a data problem named in words (scikit-
    learn's own message speaks of ``test_size`` and ``n_classes``)."""
    from sklearn.model_selection import train_test_split

    try:
        first, second = train_test_split(data, test_size=share, stratify=labels, random_state=seed)
    except ValueError as exc:
        counts = {CLASS_NAMES[int(str(k))]: int(v) for k, v in labels.value_counts().items()}
        raise DataValidationError(
            f"{len(data)} rows ({counts}) are too few for a stratified split into {sides} "
            f"with every class on both sides ({exc}); label more sites or lower "
            "test_fraction / validation_fraction",
            file=DATASET_FILE,
        ) from exc
    return first, second
