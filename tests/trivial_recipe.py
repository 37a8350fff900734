"""A recipe that does next to nothing in each stage, for measuring the runtime itself (the
run-burst benchmark, bench/bench_run_burst.py): loaded by the workers through
``RETRAINER_RECIPE_MODULES=["tests.trivial_recipe"]``. ``seed`` is read by every stage, so
runs with different seeds share no cached output."""

from __future__ import annotations

import json
from pathlib import Path

from recipes.base import DatasetSummary, Recipe, RecipeContext, RecipeParams, lazy


class TrivialParams(RecipeParams):
    seed: int = 0


def _copy(
    src: Path, out: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    (out / "data.json").write_text(json.dumps({"files": len(files), "params": params.model_dump()}))
    return DatasetSummary(rows=len(files), files=["data.json"])


def _sample(out_dir: Path, seed: int) -> None:
    (out_dir / "a.txt").write_text(f"{seed}\n")


trivial_recipe = Recipe(
    name="trivial",
    version="1",
    description="does next to nothing; for measuring the runtime",
    params_model=TrivialParams,
    primary_metric="score",
    greater_is_better=True,
    compute="cpu",
    aggregate=_copy,
    split=_copy,
    train=lazy("tests.trivial_model:train"),
    write_sample_data=_sample,
)
