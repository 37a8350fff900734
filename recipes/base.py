"""The recipe author's API: what a recipe is, gets and gives.

The contract itself lives in the kernel (``shared/recipe.py``), which the stage runtime and the
coordinator build on; recipes import it from here. See ``shared/recipe.py`` for the stage
functions' signatures and what the runtime does with a ``TrainResult``.
"""

from shared.recipe import (
    RECIPE_STAGES,
    ChildRun,
    Comparison,
    Compute,
    DatasetFunction,
    DatasetSummary,
    HistoryValue,
    ModelFlavor,
    QualityGate,
    Recipe,
    RecipeContext,
    RecipeParams,
    RecipeStage,
    TrainFunction,
    TrainResult,
    lazy,
    pinned,
)

__all__ = [
    "RECIPE_STAGES",
    "ChildRun",
    "Comparison",
    "Compute",
    "DatasetFunction",
    "DatasetSummary",
    "HistoryValue",
    "ModelFlavor",
    "QualityGate",
    "Recipe",
    "RecipeContext",
    "RecipeParams",
    "RecipeStage",
    "TrainFunction",
    "TrainResult",
    "lazy",
    "pinned",
]
