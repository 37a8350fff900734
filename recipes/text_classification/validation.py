"""Validation of the four sets: hard checks that fail the run, drift checks that are reported.

**Hard checks** (pandera schemas; any failure raises ``DataValidationError`` naming the data
set, the column, the check and the figure):

- per file: the text and label columns exist (``column_in_dataframe``), the text column holds
  strings and the label column strings (``dtype``), every row has a label (``not_nullable``);
- per set (train, test or the pool, and the tuning subset of each): at most
  ``max_empty_text_fraction`` of the texts are empty or missing (``empty_text``), at most
  ``max_non_english_fraction`` are not English (``english``, see ``language.py``), and with a
  baseline every label is one it knows (``known_label``).

pandera states the schema once, checks it lazily (every failure, not the first), reports the
failing rows, and is the data-validation library the team's notebooks already used for
DataFrames; the figures the messages quote are computed by the same functions its checks call.

**Drift checks** (soft: written to the drift report, never fail the run) compare each set's
profile with the baseline profile: class balance, mean text length, mean word length, mean
sentiment and vocabulary overlap, each with the baseline value, the new value, the tolerance
and whether it passed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recipes.text_classification.dataset import LABEL, ROW, SOURCE, TEXT
from recipes.text_classification.language import is_not_english
from recipes.text_classification.profile import (
    BaselineProfile,
    TextProfile,
    vocabulary_overlap,
)

EMPTY_TEXT, ENGLISH, KNOWN_LABEL = "empty_text", "english", "known_label"
LABEL_DTYPE = "label_dtype"


def empty_mask(texts: pd.Series) -> pd.Series:
    """True for a missing text or one of only whitespace."""
    return texts.map(lambda v: not isinstance(v, str) or not v.strip()).astype(bool)


def empty_fraction(texts: pd.Series) -> float:
    return float(empty_mask(texts).mean()) if len(texts) else 0.0


def non_english_fraction(texts: pd.Series) -> float:
    """Share of the non-empty texts that are not English."""
    present = texts[~empty_mask(texts)]
    if present.empty:
        return 0.0
    return float(present.map(is_not_english).mean())


@dataclass(frozen=True)
class Limits:
    max_empty_text_fraction: float
    max_non_english_fraction: float


def check_file(frame: pd.DataFrame, rel: str, text_column: str, label_column: str) -> list[str]:
    """Problems with one raw file's columns and types (empty when it is fine)."""
    import pandera.pandas as pa

    schema = pa.DataFrameSchema(
        {
            text_column: pa.Column(str, nullable=True),
            label_column: pa.Column(
                nullable=False, checks=pa.Check(_label_dtype_ok, name=LABEL_DTYPE)
            ),
        }
    )
    problems = []
    for (column, check), cases in _failures(schema, frame).groupby(
        ["column", "check"], sort=False, dropna=False
    ):
        rows = sorted(int(i) + 1 for i in cases["index"].dropna())
        where = f"{len(rows):,} row(s), first: row {rows[0]}" if rows else ""
        if check == "column_in_dataframe":
            missing = sorted(map(str, cases["failure_case"]))
            problems.append(
                f"file {rel}: missing column(s) {missing}; columns are "
                f"{[str(c) for c in frame.columns]} [check column_in_dataframe]"
            )
        elif check == LABEL_DTYPE:
            problems.append(
                f"file {rel}: column {column!r} has type {frame[column].dtype}; labels must be "
                f"strings or integers [check dtype]"
            )
        elif str(check).startswith("dtype"):
            values = cases["failure_case"].astype(str).head(3).tolist()
            problems.append(
                f"file {rel}: column {column!r} must hold strings, not {frame[column].dtype} "
                f"({where}; e.g. {values}) [check dtype]"
            )
        elif check == "not_nullable":
            problems.append(f"file {rel}: column {column!r}: {where} have no label [check {check}]")
    return problems


def _label_dtype_ok(labels: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(labels.dtype) or pd.api.types.is_string_dtype(labels.dtype)


def check_set(
    name: str,
    frame: pd.DataFrame,
    *,
    limits: Limits,
    labels: Sequence[str] | None,
    text_column: str,
    label_column: str,
) -> list[str]:
    """Problems with one set's content (``frame`` in the consolidated columns)."""
    import pandera.pandas as pa

    def share_at_most(
        figure: Callable[[pd.Series], float], limit: float
    ) -> Callable[[pd.Series], bool]:
        return lambda texts: figure(texts) <= limit

    text_checks = [
        pa.Check(share_at_most(empty_fraction, limits.max_empty_text_fraction), name=EMPTY_TEXT),
        pa.Check(
            share_at_most(non_english_fraction, limits.max_non_english_fraction), name=ENGLISH
        ),
    ]
    label_checks = []
    if labels is not None:
        known = set(labels)
        label_checks.append(pa.Check(lambda values: values.isin(known), name=KNOWN_LABEL))
    schema = pa.DataFrameSchema(
        {
            TEXT: pa.Column(nullable=True, checks=text_checks),
            LABEL: pa.Column(nullable=True, checks=label_checks),
        }
    )
    failures = _failures(schema, frame)
    problems = []
    rows = len(frame)
    for check in failures["check"].unique() if len(failures) else []:
        where = f"data set {name!r}"
        if check == EMPTY_TEXT:
            empty = int(empty_mask(frame[TEXT]).sum())
            problems.append(
                f"{where}, column {text_column!r}: {_pct(empty / rows)} of the texts are empty "
                f"({empty:,} of {rows:,} rows), above max_empty_text_fraction "
                f"{_pct(limits.max_empty_text_fraction)} [check {EMPTY_TEXT}]"
            )
        elif check == ENGLISH:
            share = non_english_fraction(frame[TEXT])
            problems.append(
                f"{where}, column {text_column!r}: {_pct(share)} of the texts are not English, "
                f"above max_non_english_fraction {_pct(limits.max_non_english_fraction)} "
                f"[check {ENGLISH}]"
            )
        elif check == KNOWN_LABEL:
            assert labels is not None
            unknown = frame[~frame[LABEL].isin(set(labels))]
            first = unknown.iloc[0]
            values = sorted(map(str, unknown[LABEL].unique()))
            problems.append(
                f"{where}, column {label_column!r}: {len(unknown):,} row(s) have labels the "
                f"baseline does not know: {values[:10]} (first: {first[SOURCE]}, row "
                f"{first[ROW]}); known labels are {list(labels)} [check {KNOWN_LABEL}]"
            )
    return problems


def _failures(schema: Any, frame: pd.DataFrame) -> pd.DataFrame:
    import pandera.errors

    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as exc:
        cases: pd.DataFrame = exc.failure_cases
        return cases
    return pd.DataFrame(columns=["column", "check", "failure_case", "index"])


def _pct(share: float) -> str:
    return f"{100 * share:.1f} %"


# --- drift -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftCheck:
    check: str
    baseline: Any
    value: Any
    difference: float
    tolerance: float
    passed: bool
    summary: str


@dataclass
class SetReport:
    name: str
    rows: int
    empty_texts: int
    non_english_share: float
    checks: list[DriftCheck] = field(default_factory=list)


def drift_checks(profile: TextProfile, baseline: BaselineProfile) -> list[DriftCheck]:
    t = baseline.tolerances
    labels = sorted(set(baseline.class_balance) | set(profile.class_balance))
    changes = {
        label: profile.class_balance.get(label, 0.0) - baseline.class_balance.get(label, 0.0)
        for label in labels
    }
    worst = max(changes, key=lambda label: abs(changes[label]))
    balance_diff = abs(changes[worst])
    text_change = _relative(profile.mean_text_length, baseline.mean_text_length)
    word_change = _relative(profile.mean_word_length, baseline.mean_word_length)
    sentiment_diff = profile.mean_sentiment - baseline.mean_sentiment
    overlap = vocabulary_overlap(profile.word_counts, baseline.vocabulary)
    return [
        DriftCheck(
            "class_balance",
            _rounded(baseline.class_balance),
            _rounded(profile.class_balance),
            round(balance_diff, 6),
            t.class_balance_max_diff,
            balance_diff <= t.class_balance_max_diff,
            f"largest change: {worst} {_pct(baseline.class_balance.get(worst, 0.0))} -> "
            f"{_pct(profile.class_balance.get(worst, 0.0))}",
        ),
        DriftCheck(
            "mean_text_length",
            round(baseline.mean_text_length, 2),
            round(profile.mean_text_length, 2),
            round(text_change, 6),
            t.text_length_max_rel_change,
            abs(text_change) <= t.text_length_max_rel_change,
            f"{_signed_pct(text_change)} characters per text",
        ),
        DriftCheck(
            "mean_word_length",
            round(baseline.mean_word_length, 3),
            round(profile.mean_word_length, 3),
            round(word_change, 6),
            t.word_length_max_rel_change,
            abs(word_change) <= t.word_length_max_rel_change,
            f"{_signed_pct(word_change)} letters per word",
        ),
        DriftCheck(
            "mean_sentiment",
            round(baseline.mean_sentiment, 4),
            round(profile.mean_sentiment, 4),
            round(sentiment_diff, 6),
            t.sentiment_max_diff,
            abs(sentiment_diff) <= t.sentiment_max_diff,
            f"VADER compound {sentiment_diff:+.3f}",
        ),
        DriftCheck(
            "vocabulary_overlap",
            1.0,
            round(overlap, 6),
            round(1.0 - overlap, 6),
            t.vocabulary_min_overlap,
            overlap >= t.vocabulary_min_overlap,
            f"{_pct(overlap)} of the words are in the baseline vocabulary "
            f"(at least {_pct(t.vocabulary_min_overlap)} expected)",
        ),
    ]


def _relative(value: float, reference: float) -> float:
    return (value - reference) / reference if reference else (0.0 if value == reference else 1.0)


def _rounded(shares: Mapping[str, float]) -> dict[str, float]:
    return {label: round(share, 4) for label, share in sorted(shares.items())}


def _signed_pct(change: float) -> str:
    return f"{100 * change:+.1f} %"


def flagged(reports: Sequence[SetReport]) -> list[str]:
    """``"<set>: <check>"`` for every drift check that failed its tolerance."""
    return [f"{r.name}: {c.check}" for r in reports for c in r.checks if not c.passed]


def write_drift_report(
    out_dir: Path,
    json_name: str,
    html_name: str,
    *,
    reports: Sequence[SetReport],
    baseline: BaselineProfile | None,
    baseline_name: str | None,
) -> None:
    content = {
        "baseline": None
        if baseline is None
        else {
            "blob": baseline_name,
            "source": baseline.source,
            "created_at": baseline.created_at,
            "tolerances": baseline.tolerances.model_dump(),
        },
        "drift": flagged(reports),
        "sets": [asdict(report) for report in reports],
    }
    json_path, html_path = out_dir / json_name, out_dir / html_name
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    html_path.write_text(_html(reports, baseline, baseline_name), encoding="utf-8")


def _html(
    reports: Sequence[SetReport], baseline: BaselineProfile | None, baseline_name: str | None
) -> str:
    e = html.escape
    drift = flagged(reports)
    if baseline is None:
        verdict = "No baseline profile was given: drift was not assessed."
    elif drift:
        verdict = f"Drift flagged ({len(drift)}): " + ", ".join(drift)
    else:
        verdict = "No drift: every check is within its tolerance."
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>Drift report</title><style>",
        "body{font:14px system-ui,sans-serif;margin:2rem;color:#222}",
        "table{border-collapse:collapse;margin:.5rem 0 1.5rem}",
        "th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}",
        "th{background:#f3f3f3}.pass{color:#17692e}.fail{color:#b00020;font-weight:600}",
        "code{font-size:12px}</style></head><body>",
        "<h1>Drift report</h1>",
        f"<p class='{'fail' if drift else 'pass'}'>{e(verdict)}</p>",
    ]
    if baseline is not None:
        parts.append(
            f"<p>Baseline <code>{e(baseline_name or '')}</code>, written {e(baseline.created_at)}"
            f" from <code>{e(baseline.source)}</code>.</p>"
        )
    for report in reports:
        parts.append(
            f"<h2>{e(report.name)}</h2><p>{report.rows:,} rows, {report.empty_texts:,} empty "
            f"texts, {_pct(report.non_english_share)} not English.</p>"
        )
        if not report.checks:
            continue
        parts.append(
            "<table><tr><th>check</th><th>baseline</th><th>new</th><th>difference</th>"
            "<th>tolerance</th><th>result</th><th></th></tr>"
        )
        for c in report.checks:
            result = (
                "<span class='pass'>pass</span>" if c.passed else "<span class='fail'>drift</span>"
            )
            parts.append(
                f"<tr><td>{e(c.check)}</td><td>{_cell(c.baseline)}</td><td>{_cell(c.value)}</td>"
                f"<td>{c.difference:.4g}</td><td>{c.tolerance:.4g}</td><td>{result}</td>"
                f"<td>{e(c.summary)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return "<br>".join(f"{html.escape(str(k))}: {_pct(v)}" for k, v in value.items())
    return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))
