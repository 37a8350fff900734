"""A recipe whose split is named lazily (``recipes.base.lazy``), for the warm-up test."""

from __future__ import annotations

import dataclasses

from recipes.base import lazy
from tests.recipe_fixtures import echo_recipe

lazy_echo_recipe = dataclasses.replace(
    echo_recipe, name="lazy_echo", split=lazy("tests.recipe_fixtures:_split")
)
