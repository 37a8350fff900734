"""Split: the validated data set -> ``train.parquet`` and ``test.parquet``.

An upload with train and test files keeps them as they are. A pool (``all``) is split here,
stratified by label: ``test_fraction`` of each label's rows, seeded, go to the test set (every
label needs two rows or more). Either way each row keeps its ``subset`` flag, so the tuning
subsets are the ones aggregation validated (for a pool: the validated pool subset, divided
like the pool).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.text_classification.dataset import (
    DATASET_FILE,
    LABEL,
    POOL,
    SET,
    SPLIT_FILE,
    SUBSET,
    TEST,
    TEST_FILE,
    TEXT,
    TRAIN,
    TRAIN_FILE,
)
from recipes.text_classification.params import coerce_params
from shared.errors import DataValidationError

COLUMNS = [TEXT, LABEL, SUBSET]


def split(
    dataset_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    from sklearn.model_selection import train_test_split

    p = coerce_params(params)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    data = pd.read_parquet(dataset_dir / DATASET_FILE)
    if (data[SET] == POOL).any():
        counts = data[LABEL].value_counts()
        too_small = sorted(counts[counts < 2].index)
        if too_small:
            raise DataValidationError(
                f"labels with a single row cannot be split into train and test: {too_small}",
                file=DATASET_FILE,
            )
        train, test = train_test_split(
            data, test_size=p.test_fraction, stratify=data[LABEL], random_state=p.seed
        )
        train, test = train.sort_index(), test.sort_index()
        strategy = "stratified random"
    else:
        train, test = data[data[SET] == TRAIN], data[data[SET] == TEST]
        strategy = "as uploaded"
    out_dir.mkdir(parents=True, exist_ok=True)
    train[COLUMNS].to_parquet(out_dir / TRAIN_FILE, index=False)
    test[COLUMNS].to_parquet(out_dir / TEST_FILE, index=False)
    details = {
        "strategy": strategy,
        "train_rows": len(train),
        "test_rows": len(test),
        "train_subset_rows": int(train[SUBSET].sum()),
        "test_subset_rows": int(test[SUBSET].sum()),
        "labels": {
            "train": _counts(train),
            "test": _counts(test),
        },
    }
    (out_dir / SPLIT_FILE).write_text(json.dumps(details, indent=2) + "\n")
    return DatasetSummary(
        rows=len(train) + len(test), files=[TRAIN_FILE, TEST_FILE, SPLIT_FILE], details=details
    )


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in sorted(frame[LABEL].value_counts().items())}
