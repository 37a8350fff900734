"""Aggregation: raw sensor CSV files -> one validated, time-ordered ``timeseries.csv``.

Input: any number of ``*.csv`` files under ``raw_dir`` (subfolders included), each with a
timestamp column (ISO 8601; no offset means UTC) and the same numeric sensor columns in any
order. Empty cells (and pandas' usual NA markers such as ``NA``/``NaN``) are missing values and
are kept; blank lines are ignored. Hidden files and folders (names starting with ".") are
skipped. Rows are sorted by time; a timestamp seen again is dropped
(the first file in path order wins) and counted.

Every problem raises ``DataValidationError`` naming the file (path relative to ``raw_dir``) and,
for a bad value, the 1-based data row (the header is not counted, so data row ``n`` is line
``n + 1`` of the file).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.state_identifier.params import coerce_params
from shared.errors import DataValidationError

TIMESERIES_FILE = "timeseries.csv"
PROFILE_FILE = "profile.json"

log = logging.getLogger(__name__)


def aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    p = coerce_params(params)
    ts = p.timestamp_column
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    paths = sorted(
        (f for f in raw_dir.rglob("*") if f.is_file() and _is_data_file(f.relative_to(raw_dir))),
        key=lambda path: path.relative_to(raw_dir).as_posix(),
    )
    if not paths:
        raise DataValidationError(f"no CSV files found in the raw data ({raw_dir.name or raw_dir})")

    frames: list[pd.DataFrame] = []
    rows_per_file: dict[str, int] = {}
    sensors: list[str] = []
    reference = ""
    for path in paths:
        rel = path.relative_to(raw_dir).as_posix()
        frame = read_sensor_csv(path, rel, ts)
        file_sensors = [c for c in frame.columns if c != ts]
        if not frames:
            sensors, reference = file_sensors, rel
        elif set(file_sensors) != set(sensors):
            missing = [c for c in sensors if c not in file_sensors]
            extra = [c for c in file_sensors if c not in sensors]
            raise DataValidationError(
                f"sensor columns differ from {reference}: missing {missing}, unexpected {extra}",
                file=rel,
            )
        frames.append(frame[[ts, *sensors]])
        rows_per_file[rel] = len(frame)

    data = pd.concat(frames, ignore_index=True)
    if data.empty:
        only = next(iter(rows_per_file)) if len(rows_per_file) == 1 else None
        raise DataValidationError(f"no data rows in {len(paths)} file(s)", file=only)
    for column in sensors:
        if data[column].isna().all():
            only = next(iter(rows_per_file)) if len(rows_per_file) == 1 else None
            where = "" if only else f" in any of the {len(rows_per_file)} files"
            raise DataValidationError(f"column {column!r} has no values{where}", file=only)

    data = data.sort_values(ts, kind="stable", ignore_index=True)
    duplicate_ts = data.duplicated(subset=[ts], keep="first")
    exact_duplicates = int(data.duplicated(keep="first").sum())
    conflicting = int(duplicate_ts.sum()) - exact_duplicates
    if conflicting:
        log.warning(
            "%d timestamp(s) appear again with different readings; the first file wins",
            conflicting,
        )
    data = data[~duplicate_ts].reset_index(drop=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    output = data.copy()
    output[ts] = _iso_strings(data[ts])
    output.to_csv(out_dir / TIMESERIES_FILE, index=False)

    intervals = data[ts].diff().dt.total_seconds().dropna()
    profile: dict[str, Any] = {
        "timestamp_column": ts,
        "sensor_columns": sensors,
        "rows": len(data),
        "start": str(output[ts].iloc[0]),
        "end": str(output[ts].iloc[-1]),
        "median_interval_s": float(intervals.median()) if len(intervals) else None,
        "missing_fraction": {c: round(float(data[c].isna().mean()), 6) for c in sensors},
        "rows_per_file": rows_per_file,
        "duplicate_timestamps_dropped": int(duplicate_ts.sum()),
        "conflicting_duplicates": conflicting,
    }
    (out_dir / PROFILE_FILE).write_text(json.dumps(profile, indent=2) + "\n")
    return DatasetSummary(
        rows=len(data),
        files=list(rows_per_file),
        details={
            "sensor_columns": sensors,
            "start": profile["start"],
            "end": profile["end"],
            "missing_cells": int(data[sensors].isna().sum().sum()),
            "duplicate_timestamps_dropped": int(duplicate_ts.sum()),
            "conflicting_duplicates": conflicting,
        },
    )


def _is_data_file(rel: Path) -> bool:
    """A ``.csv`` file, not hidden and not in a hidden folder (``.ipynb_checkpoints``, ``._x``)."""
    return rel.suffix.lower() == ".csv" and not any(part.startswith(".") for part in rel.parts)


def read_sensor_csv(path: Path, rel: str, timestamp_column: str) -> pd.DataFrame:
    """One raw file as (UTC timestamp, float sensors...), validated; errors name ``rel``/row."""
    try:
        raw = pd.read_csv(path, dtype=str, skip_blank_lines=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"unreadable CSV: not UTF-8 text ({exc.reason} at byte {exc.start})", file=rel
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(
            "unreadable CSV: the file is empty (no header)", file=rel
        ) from exc
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        row = int(line.group(1)) - 1 if line else None
        raise DataValidationError(f"unreadable CSV: {exc}".strip(), file=rel, row=row) from exc
    except OSError as exc:
        raise DataValidationError(f"cannot read file: {exc}", file=rel) from exc

    raw.columns = [str(c).strip() for c in raw.columns]
    if timestamp_column not in raw.columns:
        raise DataValidationError(
            f"missing required column {timestamp_column!r}; columns are {list(raw.columns)}",
            file=rel,
        )
    sensors = [c for c in raw.columns if c != timestamp_column]
    if not sensors:
        raise DataValidationError(f"no sensor columns besides {timestamp_column!r}", file=rel)
    duplicated = sorted({c for c in raw.columns if list(raw.columns).count(c) > 1})
    if duplicated:
        raise DataValidationError(f"duplicate column name(s) {duplicated}", file=rel)

    # The index is the 0-based data row, kept through dropping blank lines for error messages.
    raw = raw[raw.notna().any(axis=1)]
    out = pd.DataFrame(index=raw.index)

    text = raw[timestamp_column].str.strip()
    _raise_first(text.isna(), rel, lambda row: f"missing {timestamp_column!r} value")
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    _raise_first(
        parsed.isna(),
        rel,
        lambda row: (
            f"unparseable {timestamp_column!r} value {text.loc[row]!r} "
            "(expected ISO 8601, e.g. 2024-05-01T12:00:00Z)"
        ),
    )
    out[timestamp_column] = parsed

    first_bad: tuple[int, str] | None = None
    for column in sensors:
        cells = raw[column].str.strip()
        values = pd.to_numeric(cells, errors="coerce").astype("float64")
        bad = cells.notna() & ~np.isfinite(values.to_numpy())
        if bad.any():
            row = _first_true(bad)
            if first_bad is None or row < first_bad[0]:
                first_bad = (row, column)
        out[column] = values
    if first_bad is not None:
        row, column = first_bad
        raise DataValidationError(
            f"column {column!r}: {raw.loc[row, column]!r} is not a finite number",
            file=rel,
            row=row + 1,
        )
    return out.reset_index(drop=True)


def _raise_first(bad: pd.Series, rel: str, message: Callable[[int], str]) -> None:
    if not bad.any():
        return
    row = _first_true(bad)
    more = int(bad.sum()) - 1
    suffix = f" (and {more} more row(s))" if more else ""
    raise DataValidationError(message(row) + suffix, file=rel, row=row + 1)


def _first_true(mask: pd.Series) -> int:
    """The index label (0-based data row) of the first True in ``mask``."""
    return int(mask.index.to_numpy()[int(np.argmax(mask.to_numpy()))])


def _iso_strings(timestamps: pd.Series) -> pd.Series:
    fractional = bool(
        (timestamps.dt.microsecond != 0).any() or (timestamps.dt.nanosecond != 0).any()
    )
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if fractional else "%Y-%m-%dT%H:%M:%SZ"
    return timestamps.dt.strftime(fmt)
