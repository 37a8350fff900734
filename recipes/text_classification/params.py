"""Parameters of the text classification recipe; ``{}`` gives the production configuration.

``baseline_profile`` is a blob path (``container/path/to/baseline.json``): the worker downloads
it for the aggregation stage and its etag is part of that stage's cache key (see
``Recipe.blob_params``). Without it, validation runs the checks that need no baseline (columns,
types, empty and non-English texts) and the drift report says that drift was not assessed.
Tests and demos shrink the zoo and the tuning (``zoo=["complement_nb", "ridge"]``,
``tuning_trials=3``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from recipes.base import RecipeParams

ModelName = Literal[
    "multinomial_nb",
    "complement_nb",
    "bernoulli_nb",
    "ridge",
    "logistic_regression",
    "linear_svc",
    "sgd",
    "passive_aggressive",
    "perceptron",
    "nearest_centroid",
    "knn",
    "random_forest",
    "extra_trees",
    "gradient_boosting",
    "decision_tree",
]
MODEL_NAMES: tuple[ModelName, ...] = ModelName.__args__  # type: ignore[attr-defined]
# In the zoo for comparison, never the final model: skl2onnx has no nearest-centroid converter,
# and a k-NN graph would carry the whole training matrix, dense.
COMPARISON_ONLY: frozenset[str] = frozenset({"nearest_centroid", "knn"})


class TextClassificationParams(RecipeParams):
    # Columns (all stages).
    text_column: str = Field(default="text", min_length=1)
    label_column: str = Field(default="label", min_length=1)
    seed: int = Field(default=0, ge=0, description="seeds subsets, the split and the models")

    # Aggregation: validation against the baseline profile.
    baseline_profile: str | None = Field(
        default=None, description="blob path of the baseline profile JSON: container/path"
    )
    max_empty_text_fraction: float = Field(
        default=0.05, ge=0.0, le=1.0, description="hard failure above this share of empty texts"
    )
    max_non_english_fraction: float = Field(
        default=0.05, ge=0.0, le=1.0, description="hard failure above this share of non-English"
    )
    subset_fraction: float = Field(
        default=0.2, gt=0.0, le=1.0, description="share of each set in its tuning subset"
    )
    subset_max_rows: int = Field(
        default=5000, ge=10, description="cap on a tuning subset's rows (per set)"
    )
    sentiment_max_rows: int = Field(
        default=10_000, ge=100, description="mean sentiment is measured on a sample this large"
    )

    # Split (only for an upload without train/test files).
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)

    # Train: the zoo on the subsets, tuning of the best on the subsets, the final fit on all.
    zoo: tuple[ModelName, ...] = Field(default=MODEL_NAMES, min_length=1)
    tuning_trials: int = Field(default=50, ge=0, le=200)
    max_features: int = Field(
        default=20_000, ge=10, description="TF-IDF vocabulary cap of the zoo (tuning varies it)"
    )
    min_onnx_agreement: float = Field(
        default=0.995, ge=0.0, le=1.0, description="share of test rows where ONNX must agree"
    )

    @field_validator("zoo")
    @classmethod
    def _distinct_models(cls, zoo: tuple[ModelName, ...]) -> tuple[ModelName, ...]:
        if len(set(zoo)) != len(zoo):
            raise ValueError(f"zoo must not repeat a model: {list(zoo)}")
        return zoo

    @model_validator(mode="after")
    def _distinct_columns(self) -> TextClassificationParams:
        if self.text_column == self.label_column:
            raise ValueError("text_column and label_column must differ")
        if not set(self.zoo) - COMPARISON_ONLY:
            raise ValueError(
                f"zoo needs a model that can become the final one, not only {sorted(self.zoo)}"
            )
        return self


def coerce_params(params: RecipeParams | None) -> TextClassificationParams:
    """The stage functions accept any ``RecipeParams``; re-validate foreign ones as ours."""
    if isinstance(params, TextClassificationParams):
        return params
    if params is None:
        return TextClassificationParams()
    return TextClassificationParams.model_validate(params.model_dump())
