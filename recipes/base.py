"""What a recipe is: the data scientist's part, plain functions over local directories.

A worker (or an Azure ML command job) downloads a stage's inputs into local directories,
calls the recipe function and uploads what it wrote. Recipes never see the bus, the blob
store or the model registry, so the same code runs anywhere.

Stage functions and what they read/write:

- ``aggregate(raw_dir, out_dir, params) -> DatasetSummary``: ``raw_dir`` holds the raw blobs of
  the data set (relative paths kept). Writes one consolidated data set into ``out_dir``.
  Raises ``shared.errors.DataValidationError`` naming the bad file/row.
- ``split(dataset_dir, out_dir, params) -> DatasetSummary``: writes the split (e.g.
  ``train.csv``/``validation.csv``) into ``out_dir``.
- ``train(split_dir, out_dir, params) -> TrainResult``: fits and evaluates; may write
  artifacts (plots, reports) into ``out_dir`` and list them in the result.
- ``write_sample_data(out_dir, seed)``: writes a small raw data set for demos and tests.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Compute = Literal["cpu", "gpu"]
ModelFlavor = Literal["sklearn", "tensorflow"]
Comparison = Literal[">=", ">", "<=", "<"]

_COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


def pinned(*distributions: str) -> tuple[str, ...]:
    """``name==version`` of each installed distribution (a model's requirements should be what
    it was trained with); the bare name for one that is not installed."""
    requirements = []
    for name in distributions:
        try:
            requirements.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            requirements.append(name)
    return tuple(requirements)


class RecipeParams(BaseModel):
    """Base for a recipe's parameters: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DatasetSummary:
    rows: int
    files: list[str]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    model: Any
    flavor: ModelFlavor
    metrics: dict[str, float]
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    input_example: Any = None
    # Extra keyword arguments for the flavor's ``log_model`` (e.g. sklearn's
    # ``skops_trusted_types`` for custom transformers, ``code_paths`` for portable loading).
    log_model_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QualityGate:
    """Thresholds a model must meet to be promoted, e.g. {"silhouette": (">=", 0.2)}."""

    thresholds: Mapping[str, tuple[Comparison, float]] = field(default_factory=dict)

    def failures(self, metrics: Mapping[str, float]) -> list[str]:
        failed = []
        for metric, (comparison, threshold) in self.thresholds.items():
            value = metrics.get(metric)
            if value is None:
                failed.append(f"{metric} missing")
            elif not _COMPARATORS[comparison](value, threshold):
                failed.append(f"{metric}={value:.6g} is not {comparison} {threshold:g}")
        return failed


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    description: str
    params_model: type[RecipeParams]
    primary_metric: str
    greater_is_better: bool
    compute: Compute
    aggregate: Callable[[Path, Path, RecipeParams], DatasetSummary]
    split: Callable[[Path, Path, RecipeParams], DatasetSummary]
    train: Callable[[Path, Path, RecipeParams], TrainResult]
    write_sample_data: Callable[[Path, int], None]
    quality_gate: QualityGate = field(default_factory=QualityGate)
    pip_requirements: tuple[str, ...] = ()

    def parse_params(self, params: Mapping[str, Any]) -> RecipeParams:
        """Raises pydantic.ValidationError naming each bad parameter."""
        return self.params_model.model_validate(dict(params))

    def is_better(self, candidate: float, champion: float) -> bool:
        return candidate > champion if self.greater_is_better else candidate < champion
