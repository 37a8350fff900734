"""Recipes for the process-stack tests, loaded by the workers through
``RETRAINER_RECIPE_MODULES=["tests.e2e.slow_recipes"]``:

* ``slow_state_identifier``: training takes long enough to kill its worker mid-stage.
* ``epochs_state_identifier``: an in-process training of ``epochs`` epochs that checks for
  cancellation between epochs (``ctx.check_cancelled()``, as a real training loop does). Each
  epoch leaves a file in ``$RETRAINER_TEST_EPOCH_DIR/<gate>/`` and lasts until the test lets it
  end (``end-<n>``, or ``open`` for every epoch), so a test counts epochs instead of timing them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from pydantic import Field

from recipes.base import RecipeContext, RecipeParams, TrainResult
from recipes.state_identifier import StateIdentifierParams
from recipes.state_identifier import recipe as state_identifier

SLOW_TRAIN_S = 6.0
EPOCH_DIR_ENV = "RETRAINER_TEST_EPOCH_DIR"


def _slow_train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    time.sleep(SLOW_TRAIN_S)
    return state_identifier.train(split_dir, out_dir, params)


slow_state_identifier = dataclasses.replace(
    state_identifier, name="slow_state_identifier", train=_slow_train
)


class EpochParams(StateIdentifierParams):
    epochs: int = Field(default=20, ge=1, le=100)
    gate: str = Field(default="default", pattern=r"^[a-z0-9-]{1,40}$")


def epoch_dir(gate: str) -> Path:
    return Path(os.environ[EPOCH_DIR_ENV]) / gate


def _epochs_train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    assert isinstance(params, EpochParams)
    ctx = ctx or RecipeContext()
    gate = epoch_dir(params.gate)
    gate.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, params.epochs + 1):
        ctx.check_cancelled()  # the checkpoint between epochs
        (gate / f"started-{epoch}").touch()
        # The epoch's work, until the test lets it end; whether the cancel has reached this
        # process is recorded for the test, not acted on (only the checkpoint acts).
        while not ((gate / "open").exists() or (gate / f"end-{epoch}").exists()):
            if ctx.cancelled.is_set():
                (gate / "cancel-seen").touch()
            time.sleep(0.02)
        (gate / f"ended-{epoch}").touch()
    plain = StateIdentifierParams(**params.model_dump(exclude={"epochs", "gate"}))
    return state_identifier.train(split_dir, out_dir, plain, ctx)


epochs_state_identifier = dataclasses.replace(
    state_identifier,
    name="epochs_state_identifier",
    params_model=EpochParams,
    train=_epochs_train,
)
