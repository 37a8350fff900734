"""Text statistics of a data set, and the baseline profile new data is compared with.

A *profile* summarises one set of labelled texts: rows, class balance, mean text length (in
characters), mean word length (letters per word), mean sentiment (VADER's compound score, -1
to 1, from its offline lexicon) and the vocabulary (cleaned words, most frequent first).

The *baseline profile* is a JSON file a person keeps (the first one is written by
``retrainer baseline text_classification DATA_PREFIX --out BLOB``, see ``write_baseline``): the
known labels, the expected statistics and, next to them, the tolerances new data is held to.
Editing the tolerances (or the expected values) is how its owner tunes the drift checks.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recipes.text_classification.cleaning import tokens
from shared.errors import DataValidationError

if TYPE_CHECKING:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

BaselineFormat = Literal["retrainer.text_classification.baseline/1"]
BASELINE_FORMAT: BaselineFormat = "retrainer.text_classification.baseline/1"
# Words kept in a baseline's vocabulary (the most frequent ones).
BASELINE_VOCABULARY_SIZE = 5000
_LETTERS = r"[^\W\d_]+"


class Tolerances(BaseModel):
    """How far new data may be from the baseline before the drift report flags it."""

    model_config = ConfigDict(extra="forbid")

    class_balance_max_diff: float = Field(
        default=0.10, ge=0, le=1, description="largest change of any class's share"
    )
    text_length_max_rel_change: float = Field(
        default=0.25, ge=0, description="relative change of the mean text length"
    )
    word_length_max_rel_change: float = Field(
        default=0.10, ge=0, description="relative change of the mean word length"
    )
    sentiment_max_diff: float = Field(
        default=0.15, ge=0, le=2, description="change of the mean VADER compound score"
    )
    vocabulary_min_overlap: float = Field(
        default=0.80, ge=0, le=1, description="least share of words found in the vocabulary"
    )


class BaselineProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: BaselineFormat = BASELINE_FORMAT
    created_at: str = ""
    source: str = Field(default="", description="the data the first version was written from")
    rows: int = Field(ge=0)
    labels: list[str] = Field(min_length=1, description="every label new data may use")
    class_balance: dict[str, float]
    mean_text_length: float = Field(ge=0)
    mean_word_length: float = Field(ge=0)
    mean_sentiment: float = Field(ge=-1, le=1)
    vocabulary: list[str] = Field(description="the most frequent cleaned words")
    tolerances: Tolerances = Field(default_factory=Tolerances)


class TextProfile(BaseModel):
    """The statistics of one set (what the drift checks and the history record use)."""

    rows: int
    empty_texts: int
    label_counts: dict[str, int]
    class_balance: dict[str, float]
    mean_text_length: float
    mean_word_length: float
    mean_sentiment: float
    vocabulary_size: int
    # Word occurrences, most frequent first (not serialised: it can be large).
    word_counts: dict[str, int] = Field(default_factory=dict, exclude=True)

    def vocabulary(self, size: int = BASELINE_VOCABULARY_SIZE) -> list[str]:
        return list(self.word_counts)[:size]


def profile_texts(
    texts: pd.Series, labels: pd.Series, *, sentiment_max_rows: int, seed: int
) -> TextProfile:
    """Statistics of ``texts`` (raw; empty and missing ones only counted) and ``labels``."""
    text = texts.where(texts.notna(), "").astype(str)
    present = text[text.str.strip() != ""]
    counts = labels.astype(str).value_counts()
    label_counts = {str(label): int(counts[label]) for label in sorted(counts.index)}
    total = sum(label_counts.values())
    words = present.str.findall(_LETTERS).explode().dropna()
    word_counts: Counter[str] = Counter()
    for value in present:
        word_counts.update(tokens(value))
    return TextProfile(
        rows=len(text),
        empty_texts=len(text) - len(present),
        label_counts=label_counts,
        class_balance={label: n / total for label, n in label_counts.items()} if total else {},
        mean_text_length=float(present.str.len().mean()) if len(present) else 0.0,
        mean_word_length=float(words.str.len().mean()) if len(words) else 0.0,
        mean_sentiment=mean_sentiment(present, max_rows=sentiment_max_rows, seed=seed),
        vocabulary_size=len(word_counts),
        word_counts=dict(word_counts.most_common()),
    )


def mean_sentiment(texts: pd.Series, *, max_rows: int, seed: int) -> float:
    """VADER's mean compound score, over a seeded sample of at most ``max_rows`` texts."""
    if texts.empty:
        return 0.0
    sample = texts.sample(n=max_rows, random_state=seed) if len(texts) > max_rows else texts
    analyzer = _analyzer()
    return float(np.mean([analyzer.polarity_scores(text)["compound"] for text in sample]))


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vocabulary_overlap(word_counts: dict[str, int], vocabulary: Sequence[str]) -> float:
    """Share of the word occurrences in ``word_counts`` that ``vocabulary`` knows (1 if none)."""
    total = sum(word_counts.values())
    if not total:
        return 1.0
    known = set(vocabulary)
    return sum(n for word, n in word_counts.items() if word in known) / total


def baseline_from(profile: TextProfile, *, source: str) -> BaselineProfile:
    return BaselineProfile(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source,
        rows=profile.rows,
        labels=list(profile.label_counts),
        class_balance={k: round(v, 6) for k, v in profile.class_balance.items()},
        mean_text_length=round(profile.mean_text_length, 4),
        mean_word_length=round(profile.mean_word_length, 4),
        mean_sentiment=round(profile.mean_sentiment, 4),
        vocabulary=profile.vocabulary(),
    )


def read_baseline(path: Path, name: str) -> BaselineProfile:
    """The baseline profile at ``path``; ``DataValidationError`` naming ``name`` otherwise."""
    try:
        content: Any = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"baseline profile is not JSON: {exc}", file=name) from exc
    try:
        return BaselineProfile.model_validate(content)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'profile'}: {error['msg']}"
            for error in exc.errors()
        )
        raise DataValidationError(f"invalid baseline profile: {problems}", file=name) from exc


def write_baseline_file(baseline: BaselineProfile, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(baseline.model_dump_json(indent=2) + "\n", encoding="utf-8")
