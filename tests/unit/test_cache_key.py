"""A cacheable stage's key covers the parsed values of only the params that stage reads."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from recipes.base import Recipe
from shared.messages import RunStage
from shared.worker import cache_key
from tests.recipe_fixtures import echo_recipe

# The echo recipe's train reads ``scale`` and ``sleep_s``; aggregation and split read nothing.
SCOPED = dataclasses.replace(
    echo_recipe, stage_params={"aggregation": (), "split": (), "train": ("scale", "sleep_s")}
)
DIGESTS = {"data": "d1"}


def key(
    stage: str,
    params: dict[str, Any],
    *,
    recipe: Recipe = SCOPED,
    force: bool = False,
    digests: dict[str, str] = DIGESTS,
    run: uuid.UUID | None = None,
) -> str:
    command = RunStage.model_validate(
        {
            "correlation_id": run or uuid.uuid4(),
            "stage": stage,
            "attempt": 1,
            "recipe": recipe.name,
            "params": params,
            "force": force,
        }
    )
    return cache_key(command, recipe, recipe.parse_params(params), digests)


def test_empty_params_and_the_defaults_spelled_out_are_one_entry() -> None:
    defaults = {"scale": 1.0, "fail_with": None, "sleep_s": 0.0}
    for recipe in (SCOPED, echo_recipe):
        assert key("train", {}, recipe=recipe) == key("train", defaults, recipe=recipe)
        assert key("train", {}, recipe=recipe) == key("train", {"scale": 1}, recipe=recipe)


def test_a_train_only_param_changes_the_train_key_alone() -> None:
    for stage in ("aggregation", "split"):
        assert key(stage, {}) == key(stage, {"scale": 3.0})
    assert key("train", {}) != key("train", {"scale": 3.0})


def test_a_recipe_that_does_not_say_keys_every_stage_on_every_param() -> None:
    assert key("aggregation", {}, recipe=echo_recipe) != key(
        "aggregation", {"scale": 3.0}, recipe=echo_recipe
    )


def test_inputs_and_stage_are_in_the_key() -> None:
    assert key("split", {}) != key("split", {}, digests={"data": "d2"})
    assert key("split", {}) != key("aggregation", {})


def test_a_forced_stage_has_a_key_of_its_own_run() -> None:
    run = uuid.uuid4()
    forced = key("train", {}, force=True, run=run)
    assert forced != key("train", {})
    # A retry of the forced stage in the same run finds what its first attempt wrote.
    assert forced == key("train", {}, force=True, run=run)
    assert forced != key("train", {}, force=True)
