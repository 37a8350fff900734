"""A recipe whose training takes long enough to kill its worker mid-stage.

Loaded by the workers through ``RETRAINER_RECIPE_MODULES=tests.e2e.slow_recipes``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from recipes.base import RecipeContext, RecipeParams, TrainResult
from recipes.state_identifier import recipe as state_identifier

SLOW_TRAIN_S = 6.0


def _slow_train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    time.sleep(SLOW_TRAIN_S)
    return state_identifier.train(split_dir, out_dir, params)


slow_state_identifier = dataclasses.replace(
    state_identifier, name="slow_state_identifier", train=_slow_train
)
