"""The trivial recipe's train function and model (imports MLflow: named lazily)."""

from __future__ import annotations

from pathlib import Path

from mlflow.pyfunc import PythonModel

from recipes.base import RecipeContext, RecipeParams, TrainResult


class Constant(PythonModel):
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def,unused-ignore]
        return [1.0] * len(model_input)


def train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    return TrainResult(model=Constant(), flavor="pyfunc", metrics={"score": 1.0})
