"""Aggregation: raw CSV/Parquet files -> one validated data set, its drift report and profile.

1. Find the sets (``dataset.py``): train and test files, or one pool (``all``).
2. Hard checks per file (columns, types, labels present), then per set and per tuning subset
   (empty texts, non-English texts, labels the baseline knows); all problems of all sets are
   reported together in one ``DataValidationError`` (``validation.py``).
3. Draw the tuning subsets: a seeded sample of each set, stratified by label,
   ``subset_fraction`` of it and at most ``subset_max_rows`` rows (at least one row per label).
4. Drop the empty texts (there are few: step 2 bounds them) and write ``dataset.parquet``
   (``text``, ``label``, ``set``, ``subset``, ``source``, ``row``).
5. Profile each of the four sets and compare it with the baseline profile (when the
   ``baseline_profile`` param names one): ``validation/drift_report.json`` and ``.html``, and
   ``profile.json``. Drift is reported, never fatal.

The summary lists the drift report (the dashboard links it) and a history record of the full
data (rows per set, class balance, text statistics, drift flags) that the runtime appends to
the recipe's profile history when the run succeeds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.text_classification.dataset import (
    DATASET_FILE,
    LABEL,
    PROFILE_FILE,
    REPORT_HTML,
    REPORT_JSON,
    SET,
    SUBSET,
    SUBSET_SUFFIX,
    TEXT,
    find_sets,
    normalise,
    read_file,
)
from recipes.text_classification.params import TextClassificationParams, coerce_params
from recipes.text_classification.profile import (
    BaselineProfile,
    TextProfile,
    profile_texts,
    read_baseline,
)
from recipes.text_classification.validation import (
    Limits,
    SetReport,
    check_file,
    check_set,
    drift_checks,
    empty_mask,
    flagged,
    non_english_fraction,
    write_drift_report,
)
from shared.errors import DataValidationError

BASELINE_PARAM = "baseline_profile"

log = logging.getLogger(__name__)


def aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    p = coerce_params(params)
    ctx = ctx or RecipeContext()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    frames = read_sets(raw_dir, p)
    baseline = load_baseline(p, ctx)
    ctx.check_cancelled()

    sets: dict[str, pd.DataFrame] = {}
    for name, frame in frames.items():
        frame[SUBSET] = subset_mask(frame, p)
        sets[name] = frame
        sets[name + SUBSET_SUFFIX] = frame[frame[SUBSET]]
    limits = Limits(p.max_empty_text_fraction, p.max_non_english_fraction)
    problems: list[str] = []
    for name, frame in sets.items():
        problems += check_set(
            name,
            frame,
            limits=limits,
            labels=baseline.labels if baseline else None,
            text_column=p.text_column,
            label_column=p.label_column,
        )
        ctx.check_cancelled()
    _raise_if(problems)

    reports: list[SetReport] = []
    profiles: dict[str, TextProfile] = {}
    for name, frame in sets.items():
        profile = profiles[name] = _profile(frame, p)
        reports.append(
            SetReport(
                name=name,
                rows=profile.rows,
                empty_texts=profile.empty_texts,
                non_english_share=round(non_english_fraction(frame[TEXT]), 6),
                checks=drift_checks(profile, baseline) if baseline else [],
            )
        )
        ctx.check_cancelled()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_drift_report(
        out_dir,
        REPORT_JSON,
        REPORT_HTML,
        reports=reports,
        baseline=baseline,
        baseline_name=p.baseline_profile,
    )

    data = pd.concat([frame.assign(**{SET: name}) for name, frame in frames.items()])
    empty = empty_mask(data[TEXT])
    data = data[~empty].reset_index(drop=True)
    data[TEXT] = data[TEXT].astype(str)
    data[LABEL] = data[LABEL].astype(str)
    data.to_parquet(out_dir / DATASET_FILE, index=False)
    full = _profile(data, p)
    profile_content = {
        "sets": {name: profile.model_dump() for name, profile in profiles.items()},
        "full": full.model_dump(),
    }
    (out_dir / PROFILE_FILE).write_text(json.dumps(profile_content, indent=2) + "\n")

    drift = flagged(reports)
    if drift:
        log.warning("drift flagged against the baseline profile: %s", ", ".join(drift))
    counts = {name: len(frame) for name, frame in sets.items()}
    return DatasetSummary(
        rows=len(data),
        files=[DATASET_FILE, PROFILE_FILE, REPORT_JSON, REPORT_HTML],
        details={
            "sets": counts,
            "labels": full.label_counts,
            "empty_texts_dropped": int(empty.sum()),
            "baseline_profile": p.baseline_profile,
            "drift": drift,
        },
        reports={"drift_report": REPORT_HTML},
        history_record=history_record(full, counts, int(empty.sum()), drift, p),
    )


def read_sets(raw_dir: Path, p: TextClassificationParams) -> dict[str, pd.DataFrame]:
    """Each set's rows in the consolidated columns; every file's problems at once."""
    problems: list[str] = []
    frames: dict[str, pd.DataFrame] = {}
    for name, files in find_sets(raw_dir).items():
        parts = []
        for rel in files:
            raw = read_file(raw_dir / rel, rel)
            found = check_file(raw, rel, p.text_column, p.label_column)
            problems += [f"data set {name!r}: {problem}" for problem in found]
            if not found:
                parts.append(normalise(raw, rel, p.text_column, p.label_column))
        if parts:
            frames[name] = pd.concat(parts, ignore_index=True)
    _raise_if(problems)
    for name, frame in frames.items():
        if frame.empty:
            raise DataValidationError(f"data set {name!r} has no rows")
    return frames


def load_baseline(p: TextClassificationParams, ctx: RecipeContext) -> BaselineProfile | None:
    if p.baseline_profile is None:
        log.warning("no baseline_profile given: only the checks that need none are run")
        return None
    return read_baseline(ctx.blob_input(BASELINE_PARAM), p.baseline_profile)


def subset_mask(frame: pd.DataFrame, p: TextClassificationParams) -> pd.Series:
    """The tuning subset: per label, a seeded sample of ``fraction`` of its rows (at least
    one), where ``fraction`` keeps the whole subset within ``subset_max_rows``."""
    fraction = min(p.subset_fraction, p.subset_max_rows / max(len(frame), 1))
    rng = np.random.default_rng(p.seed)
    chosen = np.zeros(len(frame), dtype=bool)
    labels = frame[LABEL].astype(str).to_numpy()
    for label in sorted(set(labels)):
        positions = np.flatnonzero(labels == label)
        take = max(1, round(len(positions) * fraction))
        chosen[rng.choice(positions, size=min(take, len(positions)), replace=False)] = True
    return pd.Series(chosen, index=frame.index)


def _profile(frame: pd.DataFrame, p: TextClassificationParams) -> TextProfile:
    return profile_texts(
        frame[TEXT], frame[LABEL], sentiment_max_rows=p.sentiment_max_rows, seed=p.seed
    )


def history_record(
    full: TextProfile,
    counts: Mapping[str, int],
    empty_dropped: int,
    drift: list[str],
    p: TextClassificationParams,
) -> dict[str, str | int | float | bool]:
    """One flat row for the profile history (BI tools read flat columns best)."""
    record: dict[str, str | int | float | bool] = {
        f"rows_{name}": count for name, count in counts.items()
    }
    record.update(
        {
            "rows": full.rows,
            "empty_texts_dropped": empty_dropped,
            "labels": ",".join(full.label_counts),
            "mean_text_length": round(full.mean_text_length, 4),
            "mean_word_length": round(full.mean_word_length, 4),
            "mean_sentiment": round(full.mean_sentiment, 4),
            "vocabulary_size": full.vocabulary_size,
            "baseline_profile": p.baseline_profile or "",
            "drift_flags": len(drift),
            "drift": "; ".join(drift),
        }
    )
    record.update({f"share_{label}": round(s, 6) for label, s in full.class_balance.items()})
    return record


def _raise_if(problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise DataValidationError("validation failed: " + "; ".join(problems[:20]) + more)
