"""Where the raw files are, which set each belongs to, and the stages' file names.

Raw data: ``.csv`` (UTF-8, header row) and ``.parquet`` files anywhere under the data prefix
(hidden files and folders skipped, other files ignored). A file whose name starts with
``train`` belongs to the train set, one starting with ``test`` to the test set (so
``train-2024.csv`` plus ``train-2025.csv`` is one train set); an upload with neither is one
pool, ``all``, that the split stage divides. An upload that has one of them but not the other,
or pool files beside them, is refused: it is not clear what the extra files are.

Every file needs the text and the label column (names are params); other columns are ignored.
In a CSV every cell is read as text (an empty cell is an empty text / a missing label); in a
Parquet file the text column must hold strings and the label column strings or integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from shared.errors import DataValidationError

DATA_EXTENSIONS = (".csv", ".parquet")
TRAIN, TEST, POOL = "train", "test", "all"
SUBSET_SUFFIX = "_subset"

# What the stages write.
DATASET_FILE = "dataset.parquet"
PROFILE_FILE = "profile.json"
REPORT_DIR = "validation"
REPORT_JSON = f"{REPORT_DIR}/drift_report.json"
REPORT_HTML = f"{REPORT_DIR}/drift_report.html"
TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
SPLIT_FILE = "split.json"

# The columns of the consolidated data set (whatever the raw columns were called).
TEXT, LABEL, SET, SUBSET, SOURCE, ROW = "text", "label", "set", "subset", "source", "row"


def find_sets(raw_dir: Path) -> dict[str, list[str]]:
    """Relative paths of the data files of each set, ``train`` and ``test`` or ``all``."""
    if not raw_dir.is_dir():
        raise DataValidationError(f"raw data folder {raw_dir} does not exist")
    files = sorted(
        path.relative_to(raw_dir).as_posix()
        for path in raw_dir.rglob("*")
        if path.is_file()
        and path.suffix.lower() in DATA_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(raw_dir).parts)
    )
    if not files:
        raise DataValidationError(
            f"no {'/'.join(DATA_EXTENSIONS)} files found in the raw data ({raw_dir.name})"
        )
    sets: dict[str, list[str]] = {TRAIN: [], TEST: [], POOL: []}
    for rel in files:
        name = Path(rel).name.lower()
        kind = TRAIN if name.startswith(TRAIN) else TEST if name.startswith(TEST) else POOL
        sets[kind].append(rel)
    if sets[TRAIN] or sets[TEST]:
        if not (sets[TRAIN] and sets[TEST]):
            missing = TEST if sets[TRAIN] else TRAIN
            raise DataValidationError(
                f"the upload has {TRAIN if sets[TRAIN] else TEST} files but no {missing} file "
                f"(a name starting with {missing!r}); upload both, or one pool of files whose "
                "names start with neither, for the split stage to divide"
            )
        if sets[POOL]:
            raise DataValidationError(
                f"files neither train nor test beside train and test files: {sets[POOL]}; "
                "name each file train* or test*"
            )
        del sets[POOL]
        return sets
    return {POOL: sets[POOL]}


def read_file(path: Path, rel: str) -> pd.DataFrame:
    """One raw file, every column; ``DataValidationError`` naming ``rel`` when unreadable."""
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"unreadable CSV: not UTF-8 text ({exc.reason} at byte {exc.start})", file=rel
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError("unreadable CSV: the file is empty", file=rel) from exc
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        # pyarrow's ArrowInvalid is a ValueError; a truncated Parquet file raises it too.
        raise DataValidationError(f"unreadable file: {exc}", file=rel) from exc


def normalise(frame: pd.DataFrame, rel: str, text_column: str, label_column: str) -> pd.DataFrame:
    """The text and label columns as ``text``/``label`` plus ``source`` and ``row`` (1-based
    data row). Integer labels become strings; an empty label is a missing one."""
    labels = frame[label_column]
    if pd.api.types.is_integer_dtype(labels.dtype):
        labels = labels.astype(str)
    elif pd.api.types.is_string_dtype(labels.dtype) or labels.dtype == object:
        labels = labels.map(lambda v: v.strip() or None if isinstance(v, str) else v)
    return pd.DataFrame(
        {
            TEXT: frame[text_column].to_numpy(),
            LABEL: labels.to_numpy(),
            SOURCE: rel,
            ROW: range(1, len(frame) + 1),
        }
    )


def set_counts(sets: Mapping[str, pd.DataFrame]) -> dict[str, int]:
    return {name: len(frame) for name, frame in sets.items()}
