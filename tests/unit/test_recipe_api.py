"""The recipe API itself: stage-scoped params and the context handed to stage functions."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from recipes.base import RecipeContext
from shared.errors import StageCancelledError
from tests.recipe_fixtures import echo_recipe


def test_a_stage_reads_the_params_the_recipe_declares_for_it_and_all_otherwise() -> None:
    recipe = dataclasses.replace(echo_recipe, stage_params={"aggregation": ["scale"], "split": []})

    assert recipe.params_read_by("aggregation") == {"scale"}
    assert recipe.params_read_by("split") == frozenset()
    assert recipe.params_read_by("train") == {"scale", "fail_with", "sleep_s"}


@pytest.mark.parametrize(
    ("stage_params", "problem"),
    [
        ({"aggregation": ["scael"]}, "unknown params ['scael']"),
        ({"register": ["scale"]}, "unknown stage 'register'"),
    ],
)
def test_stage_params_naming_what_does_not_exist_are_refused(
    stage_params: dict[str, list[str]], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[")):
        dataclasses.replace(echo_recipe, stage_params=stage_params)  # type: ignore[arg-type]


def test_check_cancelled_raises_only_once_cancelled() -> None:
    context = RecipeContext(cancelled=threading.Event(), max_workers=2)
    context.check_cancelled()
    context.cancelled.set()
    with pytest.raises(StageCancelledError):
        context.check_cancelled()
    with pytest.raises(ValueError, match="max_workers"):
        RecipeContext(max_workers=0)
