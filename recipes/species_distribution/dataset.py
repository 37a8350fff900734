"""The on-disk format between the stages.

An aggregated data set folder::

    dataset.parquet      id, the feature columns as read from the site, the 0/1 target
    dataset.json         DatasetSchema: the columns' roles, species, counts
    search_space.json    optional: the site's lgbm_params.yml, validated

A split folder holds ``train.parquet``, ``test.parquet`` (and ``validation.parquet``) with
the same columns, plus copies of ``dataset.json`` and ``search_space.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from shared.errors import DataValidationError

DATASET_FILE = "dataset.parquet"
SCHEMA_FILE = "dataset.json"
SEARCH_SPACE_FILE = "search_space.json"
TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
VALIDATION_FILE = "validation.parquet"

PRESENT, ABSENT = "PRESENT", "ABSENT"
CLASS_NAMES = (ABSENT, PRESENT)  # index = the binary target


@dataclass(frozen=True)
class DatasetSchema:
    species: str
    id_column: str
    target_column: str
    feature_columns: list[str]
    categorical_columns: list[str]
    features_file: str
    gold_file: str
    rows: int
    present: int
    absent: int
    dropped_columns: list[str] = field(default_factory=list)
    search_space: str | None = None
    dropped_rows: dict[str, int] = field(default_factory=dict)

    @property
    def numeric_columns(self) -> list[str]:
        return [c for c in self.feature_columns if c not in self.categorical_columns]

    def write(self, folder: Path) -> None:
        content = {**asdict(self), "classes": list(CLASS_NAMES)}
        (folder / SCHEMA_FILE).write_text(json.dumps(content, indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> DatasetSchema:
        path = folder / SCHEMA_FILE
        if not path.is_file():
            raise DataValidationError(
                f"expected {SCHEMA_FILE} in the stage input", file=SCHEMA_FILE
            )
        content: dict[str, Any] = json.loads(path.read_text())
        content.pop("classes", None)
        return cls(**content)


def read_table(folder: Path, name: str) -> pd.DataFrame:
    path = folder / name
    if not path.is_file():
        raise DataValidationError(f"expected {name} in the stage input", file=name)
    return pd.read_parquet(path)
