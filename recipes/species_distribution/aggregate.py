"""Aggregation: a site's features table + one species' gold table -> one labelled data set.

As the team's prep step: drop the configured columns, drop rows whose target (or id) is
missing, ids to integers, inner join on ``gbifid``, binarise the target (ABSENT=0,
PRESENT=1). Beyond it, what real exports contain is made explicit:

- ids are parsed as whole numbers, so ``000123`` in one table joins ``123`` in the other;
- a features row repeated exactly is dropped; an id repeated with different values keeps its
  first row (counted, logged);
- a gold row repeated is dropped; an id labelled both PRESENT and ABSENT is dropped entirely
  (its label is unknown; counted, logged);
- presence values are read without regard to letter case or surrounding spaces;
- a text column of the features is categorical; one that is mostly numbers with a stray word
  (``n/a``) is an error, not a category.

Errors (``DataValidationError``) name the file and the 1-based data row: an unknown presence
value, a missing id or presence column, a bad id, no rows in common, a single class.

Output: ``dataset.parquet`` (id, the feature columns as read, the 0/1 target),
``dataset.json`` (the columns' roles and the counts) and, when the site has one,
``search_space.json`` (its ``lgbm_params.yml``, validated).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.species_distribution.dataset import (
    ABSENT,
    CLASS_NAMES,
    DATASET_FILE,
    PRESENT,
    SEARCH_SPACE_FILE,
    DatasetSchema,
)
from recipes.species_distribution.params import (
    DEFAULT_SEARCH_SPACE_FILE,
    SpeciesDistributionParams,
    coerce_params,
)
from recipes.species_distribution.search_space import (
    SearchSpaceError,
    parse_search_space,
    to_json,
)
from recipes.species_distribution.tables import (
    find_features,
    find_gold,
    first_row,
    parse_ids,
    read_table,
    require_column,
)
from shared.errors import DataValidationError

# A text column is taken for a numeric one with stray words when this share of it parses.
NUMERIC_SHARE = 0.9

log = logging.getLogger(__name__)


def aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    p = coerce_params(params)
    site, out_dir = Path(raw_dir), Path(out_dir)
    features_path = find_features(site, p.features_file)
    species, gold_path = find_gold(site, p.gold_dir, p.species)
    features_rel = features_path.relative_to(site).as_posix()
    gold_rel = gold_path.relative_to(site).as_posix()
    id_column, target = p.id_column, p.target_column

    features = read_table(features_path, features_rel, text_columns=(id_column,))
    require_column(features, id_column, features_rel, "id")
    if target in features.columns:
        raise DataValidationError(
            f"the features have a column named like the target {target!r}; rename it or set "
            "target_column",
            file=features_rel,
        )
    absent_drops = [c for c in p.drop_columns if c not in features.columns]
    if absent_drops:
        log.info("drop_columns not in %s: %s", features_rel, absent_drops)
    features = features.drop(columns=[c for c in p.drop_columns if c in features.columns])
    missing_categorical = [c for c in p.categorical_columns if c not in features.columns]
    if missing_categorical:
        raise DataValidationError(
            f"categorical_columns {missing_categorical} are not columns of the features "
            f"(columns are {list(features.columns)})",
            file=features_rel,
        )
    feature_columns = [c for c in features.columns if c != id_column]
    if not feature_columns:
        raise DataValidationError(
            f"no feature columns besides {id_column!r} (after drop_columns)", file=features_rel
        )
    categorical = _categorical_columns(features, feature_columns, p, features_rel)

    gold = read_table(gold_path, gold_rel, text_columns=(id_column, target))
    require_column(gold, id_column, gold_rel, "id")
    require_column(gold, target, gold_rel, "presence")
    labels, null_targets = _binarise(gold[target], gold_rel, target)

    features[id_column] = parse_ids(features[id_column], features_rel, id_column)
    gold_ids = parse_ids(gold[id_column], gold_rel, id_column)
    gold = pd.DataFrame({id_column: gold_ids, target: labels}).dropna()
    null_feature_ids = int(features[id_column].isna().sum())
    features = features.dropna(subset=[id_column])
    features, feature_duplicates, feature_conflicts = _dedupe_features(features, id_column)
    gold, gold_duplicates, gold_conflicts = _dedupe_gold(gold, id_column, target)
    if feature_conflicts:
        log.warning(
            "%s: %d id(s) appear again with different values; the first row is kept",
            features_rel,
            feature_conflicts,
        )
    if gold_conflicts:
        log.warning(
            "%s: %d id(s) are labelled both PRESENT and ABSENT; they are left out",
            gold_rel,
            gold_conflicts,
        )

    data = features.merge(gold, on=id_column, how="inner", validate="one_to_one")
    if data.empty:
        raise DataValidationError(
            f"no {id_column} in common with {features_rel} ({len(features)} ids there, "
            f"{len(gold)} labelled here): the inner join is empty",
            file=gold_rel,
        )
    data[id_column] = data[id_column].astype("int64")
    data[target] = data[target].astype("int8")
    present = int(data[target].sum())
    absent = len(data) - present
    if present == 0 or absent == 0:
        only = ABSENT if present == 0 else PRESENT
        raise DataValidationError(
            f"all {len(data)} joined rows are {only}; a presence/absence model needs both classes",
            file=gold_rel,
        )
    data = data.sort_values(id_column, kind="stable", ignore_index=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    data.to_parquet(out_dir / DATASET_FILE, index=False)
    files = [features_rel, gold_rel]
    space_file = _copy_search_space(site, out_dir, p)
    if space_file is not None:
        files.append(space_file)
    dropped = {
        "null_presence": null_targets,
        "null_feature_ids": null_feature_ids,
        "null_gold_ids": int(gold_ids.isna().sum()),
        "duplicate_feature_rows": feature_duplicates,
        "conflicting_feature_ids": feature_conflicts,
        "duplicate_gold_rows": gold_duplicates,
        "conflicting_gold_ids": gold_conflicts,
        "features_without_gold": len(features) - len(data),
        "gold_without_features": len(gold) - len(data),
    }
    DatasetSchema(
        species=species,
        id_column=id_column,
        target_column=target,
        feature_columns=feature_columns,
        categorical_columns=categorical,
        features_file=features_rel,
        gold_file=gold_rel,
        rows=len(data),
        present=present,
        absent=absent,
        dropped_columns=[c for c in p.drop_columns if c not in absent_drops],
        search_space=space_file,
        dropped_rows=dropped,
    ).write(out_dir)
    return DatasetSummary(
        rows=len(data),
        files=files,
        details={
            "species": species,
            "present": present,
            "absent": absent,
            "prevalence": round(present / len(data), 4),
            "features": len(feature_columns),
            "categorical": categorical,
            "dropped_rows": dropped,
        },
    )


def _binarise(values: pd.Series, rel: str, column: str) -> tuple[pd.Series, int]:
    """PRESENT -> 1, ABSENT -> 0, missing -> NA (dropped, counted); anything else raises."""
    text = values.astype("string").str.strip().str.upper()
    text = text.mask(text == "")
    unknown = text.notna() & ~text.isin(CLASS_NAMES)
    if unknown.any():
        row = first_row(unknown)
        more = int(unknown.sum()) - 1
        suffix = f" (and {more} more row(s))" if more else ""
        raise DataValidationError(
            f"{column} is {values.iloc[row - 1]!r}; expected {PRESENT} or {ABSENT}{suffix}",
            file=rel,
            row=row,
        )
    labels = text.map({ABSENT: 0, PRESENT: 1}, na_action="ignore").astype("Int8")
    return labels, int(text.isna().sum())


def _categorical_columns(
    features: pd.DataFrame, columns: list[str], p: SpeciesDistributionParams, rel: str
) -> list[str]:
    categorical = []
    for column in columns:
        values = features[column]
        if column in p.categorical_columns:
            categorical.append(column)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            continue
        elif values.isna().all():
            raise DataValidationError(f"column {column!r} has no values", file=rel)
        else:
            _refuse_numbers_with_stray_words(values, column, rel)
            categorical.append(column)
    return categorical


def _refuse_numbers_with_stray_words(values: pd.Series, column: str, rel: str) -> None:
    present = values.dropna().astype(str).str.strip()
    present = present[present != ""]
    parsed = pd.to_numeric(present, errors="coerce")
    if len(present) and parsed.notna().mean() >= NUMERIC_SHARE:
        words = parsed.isna()
        position = int(present.index[words.to_numpy()][0])
        raise DataValidationError(
            f"column {column!r} holds numbers but also {values.iloc[position]!r} "
            f"({int(words.sum())} such value(s)); leave the cell empty for a missing value",
            file=rel,
            row=position + 1,
        )


def _dedupe_features(features: pd.DataFrame, id_column: str) -> tuple[pd.DataFrame, int, int]:
    exact = features.duplicated(keep="first")
    features = features[~exact]
    repeated = features.duplicated(subset=[id_column], keep="first")
    conflicts = int(features.loc[repeated, id_column].nunique())
    return features[~repeated], int(exact.sum()), conflicts


def _dedupe_gold(gold: pd.DataFrame, id_column: str, target: str) -> tuple[pd.DataFrame, int, int]:
    exact = gold.duplicated(keep="first")
    gold = gold[~exact]
    conflicting = gold[id_column].duplicated(keep=False)
    conflicts = int(gold.loc[conflicting, id_column].nunique())
    return gold[~conflicting], int(exact.sum()), conflicts


def _copy_search_space(site: Path, out_dir: Path, p: SpeciesDistributionParams) -> str | None:
    """Validates the site's search-space file into ``search_space.json``; its name if any."""
    name = p.search_space_file or DEFAULT_SEARCH_SPACE_FILE
    path = site / name
    if not path.is_file():
        if p.search_space_file is not None:
            raise DataValidationError(
                "the search space file named by search_space_file is not in the site folder",
                file=name,
            )
        return None
    try:
        space = parse_search_space(path.read_text(encoding="utf-8"), source=name)
    except (SearchSpaceError, UnicodeDecodeError) as exc:
        raise DataValidationError(str(exc)) from exc
    (out_dir / SEARCH_SPACE_FILE).write_text(to_json(space))
    return path.relative_to(site).as_posix()
