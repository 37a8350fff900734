"""The site layout and reading its tables (CSV or Parquet), with errors naming file and row.

A site is one folder (the run's data prefix)::

    <site>/features.parquet        or features.csv: gbifid + environmental columns (+ lat/lon)
    <site>/gold/<species>.csv      or .parquet: gbifid, presence (PRESENT / ABSENT)
    <site>/lgbm_params.yml         optional: the tuning search space (search_space.py)

A species is named as the team names it ("Cygnus buccinator"); its gold table's file name is
the same in lower case with spaces and hyphens as underscores (``cygnus_buccinator.csv``); the
team's ``<species>_golddata.csv`` names are found too. Rows are numbered from 1, the header
not counted, in every error.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from shared.errors import DataValidationError

TABLE_SUFFIXES = (".parquet", ".csv")
GOLD_SUFFIX = "_golddata"
# An id: digits, leading zeros allowed; "123.0" too, as a spreadsheet or pandas may write one.
_ID_PATTERN = re.compile(r"^\s*(\d{1,18})(?:\.0*)?\s*$")


def species_key(name: str) -> str:
    """``'Cygnus buccinator'``, ``cygnus-buccinator``, ``cygnus_buccinator_golddata`` ->
    ``cygnus_buccinator``."""
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return key.removesuffix(GOLD_SUFFIX)


def find_features(site: Path, name: str) -> Path:
    """The features table: ``name`` itself, or ``name`` + .parquet / .csv."""
    candidates = [site / name] if Path(name).suffix else []
    candidates += [site / f"{name}{suffix}" for suffix in TABLE_SUFFIXES]
    found = [path for path in candidates if path.is_file()]
    if not found:
        tried = ", ".join(sorted({p.relative_to(site).as_posix() for p in candidates}))
        raise DataValidationError(f"no features table in the site folder; looked for {tried}")
    if len(found) > 1:
        names = ", ".join(p.relative_to(site).as_posix() for p in found)
        raise DataValidationError(f"two features tables, {names}; keep one")
    return found[0]


def list_gold_tables(site: Path, gold_dir: str) -> dict[str, list[Path]]:
    """Gold tables by species key (normally one file each)."""
    folder = site / gold_dir
    tables: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            hidden = path.name.startswith(".")
            if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES and not hidden:
                tables.setdefault(species_key(path.stem), []).append(path)
    return tables


def find_gold(site: Path, gold_dir: str, species: str | None) -> tuple[str, Path]:
    """(species key, gold table) for ``species``, or the only one when ``species`` is None."""
    tables = list_gold_tables(site, gold_dir)
    if not tables:
        raise DataValidationError(
            f"no gold tables (<species>.csv or .parquet) in {gold_dir}/ of the site folder"
        )
    if species is None:
        if len(tables) > 1:
            raise DataValidationError(
                f"the site has gold tables for {len(tables)} species ({', '.join(tables)}); "
                "choose one with the species param"
            )
        key = next(iter(tables))
    else:
        key = species_key(species)
        if key not in tables:
            raise DataValidationError(
                f"no gold table for species {species!r} (looked for {gold_dir}/{key}.csv or "
                f".parquet); the site has: {', '.join(tables)}"
            )
    paths = tables[key]
    if len(paths) > 1:
        names = ", ".join(p.relative_to(site).as_posix() for p in paths)
        raise DataValidationError(f"species {key!r} has more than one gold table: {names}")
    return key, paths[0]


def read_table(path: Path, rel: str, *, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table; ``text_columns`` of a CSV are read as text, untouched (ids
    keep their leading zeros until they are parsed)."""
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                dtype=dict.fromkeys(text_columns, str),
                encoding="utf-8",
                skipinitialspace=True,
            )
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"unreadable CSV: not UTF-8 text ({exc.reason} at byte {exc.start})", file=rel
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError("the file is empty (no header)", file=rel) from exc
    except pd.errors.ParserError as exc:
        line = re.search(r"line (\d+)", str(exc))
        row = int(line.group(1)) - 1 if line else None
        raise DataValidationError(f"unreadable CSV: {exc}".strip(), file=rel, row=row) from exc
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError)
        raise DataValidationError(f"unreadable table: {exc}", file=rel) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    duplicated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if duplicated:
        raise DataValidationError(f"duplicate column name(s) {duplicated}", file=rel)
    return frame.reset_index(drop=True)


def require_column(frame: pd.DataFrame, column: str, rel: str, what: str) -> None:
    if column not in frame.columns:
        raise DataValidationError(
            f"missing the {what} column {column!r}; columns are {list(frame.columns)}", file=rel
        )


def parse_ids(values: pd.Series, rel: str, column: str) -> pd.Series:
    """Ids as int64 (``00123`` -> 123); missing ids stay missing (``<NA>``); anything else
    that is not a whole number raises, naming the first bad row."""
    if pd.api.types.is_integer_dtype(values.dtype):
        ids = values.astype("Int64")
        negative = ids.lt(0).fillna(False)
        if negative.any():
            _raise_at(negative, rel, f"{column} must not be negative, got {{value}}", values)
        return ids
    text = values.map(_id_text, na_action="ignore")
    matched = text.str.extract(_ID_PATTERN, expand=False)
    bad = text.notna() & matched.isna()
    if bad.any():
        _raise_at(bad, rel, f"{column} {{value!r}} is not a whole-number id", values)
    return pd.to_numeric(matched, errors="coerce").astype("Int64")


def _id_text(value: object) -> str | None:
    if isinstance(value, float):
        return None if np.isnan(value) else repr(value)
    text = str(value).strip()
    return text or None


def _raise_at(mask: pd.Series, rel: str, template: str, values: pd.Series) -> None:
    position = int(np.flatnonzero(mask.to_numpy())[0])
    more = int(mask.sum()) - 1
    message = template.format(value=values.iloc[position])
    if more:
        message += f" (and {more} more row(s))"
    raise DataValidationError(message, file=rel, row=position + 1)


def first_row(mask: pd.Series) -> int:
    """The 1-based row of the first True in ``mask`` (index = 0-based position)."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1
