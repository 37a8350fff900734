"""Small recipes for tests of the runtime: plain functions over local directories."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes.base import (
    DatasetSummary,
    QualityGate,
    Recipe,
    RecipeContext,
    RecipeParams,
    TrainResult,
)
from shared.errors import DataValidationError, UnknownRecipeError


class EchoParams(RecipeParams):
    scale: float = 1.0
    fail_with: str | None = None
    sleep_s: float = 0.0


def _aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    numbers: list[float] = []
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file())
    for path in files:
        for row, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                numbers.append(float(line))
            except ValueError:
                raise DataValidationError(
                    f"{line!r} is not a number", file=str(path.relative_to(raw_dir)), row=row
                ) from None
    (out_dir / "numbers.json").write_text(json.dumps(numbers))
    return DatasetSummary(rows=len(numbers), files=[str(p.relative_to(raw_dir)) for p in files])


def _split(
    dataset_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    numbers = json.loads((dataset_dir / "numbers.json").read_text())
    (out_dir / "train.json").write_text(json.dumps(numbers))
    return DatasetSummary(rows=len(numbers), files=["train.json"])


def _train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    assert isinstance(params, EchoParams)
    if params.fail_with == "transient":
        raise OSError("disk hiccup")
    if params.sleep_s:
        time.sleep(params.sleep_s)
    numbers = json.loads((split_dir / "train.json").read_text())
    mean = sum(numbers) / len(numbers) * params.scale
    return TrainResult(model={"mean": mean}, flavor="sklearn", metrics={"score": mean})


def _sample(out_dir: Path, seed: int) -> None:
    (out_dir / "a.txt").write_text("1\n2\n3\n")


echo_recipe = Recipe(
    name="echo",
    version="1",
    description="averages numbers; for runtime tests",
    params_model=EchoParams,
    primary_metric="score",
    greater_is_better=True,
    compute="cpu",
    aggregate=_aggregate,
    split=_split,
    train=_train,
    write_sample_data=_sample,
    quality_gate=QualityGate({"score": (">=", 0.0)}),
)


def only(recipe: Recipe) -> Callable[[str], Recipe]:
    """A worker's recipe lookup that knows ``recipe`` alone."""

    def lookup(name: str) -> Recipe:
        if name != recipe.name:
            raise UnknownRecipeError(name, [recipe.name])
        return recipe

    return lookup


@dataclass(frozen=True)
class Trained:
    """A recipe run stage by stage on its own sample data, with every directory kept."""

    raw_dir: Path
    dataset_dir: Path
    split_dir: Path
    out_dir: Path
    aggregated: DatasetSummary
    split: DatasetSummary
    result: TrainResult


def train_on_sample(recipe: Recipe, root: Path, *, seed: int, params: dict[str, Any]) -> Trained:
    raw, dataset, split_dir, out = (root / n for n in ("raw", "dataset", "split", "out"))
    recipe.write_sample_data(raw, seed)
    parsed = recipe.parse_params(params)
    aggregated = recipe.aggregate(raw, dataset, parsed)
    split = recipe.split(dataset, split_dir, parsed)
    result = recipe.train(split_dir, out, parsed)
    return Trained(raw, dataset, split_dir, out, aggregated, split, result)
