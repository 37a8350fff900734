"""Finding recipes by name.

Recipes come from two places, in this order:

1. the ``retrainer.recipes`` entry-point group: each entry point loads one ``Recipe`` object
   (installed packages declare them in their ``pyproject.toml``);
2. each module named in ``extra_modules`` (the ``recipe_modules`` setting): every module-level
   attribute that is a ``Recipe`` instance.

A recipe is known by its ``Recipe.name``. A broken entry point (import error, wrong object) is
logged and skipped so it cannot hide the others; a module named in ``extra_modules`` that cannot
be imported is a configuration mistake and raises ``ConfigurationError``. When two sources give
the same name, the later one wins (a module in ``extra_modules`` can override an installed
recipe) and a warning says so. Results are cached per ``extra_modules`` tuple.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import metadata
from types import MappingProxyType
from typing import Any

from shared.errors import ConfigurationError, UnknownRecipeError
from shared.recipe import Recipe

ENTRY_POINT_GROUP = "retrainer.recipes"

log = logging.getLogger(__name__)


def list_recipes(extra_modules: Sequence[str] = ()) -> dict[str, Recipe]:
    """All known recipes by name (a fresh dict; the discovery itself is cached)."""
    return dict(_discover(tuple(extra_modules)))


def get_recipe(name: str, extra_modules: Sequence[str] = ()) -> Recipe:
    """The recipe called ``name``; ``UnknownRecipeError`` lists the known names otherwise."""
    recipes = _discover(tuple(extra_modules))
    try:
        return recipes[name]
    except KeyError:
        raise UnknownRecipeError(name, sorted(recipes)) from None


def clear_cache() -> None:
    """Forget discovered recipes (after installing a package or editing a module)."""
    _discover.cache_clear()


def _entry_points() -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


@lru_cache(maxsize=32)
def _discover(extra_modules: tuple[str, ...]) -> MappingProxyType[str, Recipe]:
    found: dict[str, Recipe] = {}
    sources: dict[str, str] = {}

    def add(recipe: Recipe, source: str) -> None:
        previous = found.get(recipe.name)
        if previous is recipe:
            return
        if previous is not None:
            log.warning(
                "recipe %r from %s replaces the one from %s",
                recipe.name,
                source,
                sources[recipe.name],
            )
        found[recipe.name] = recipe
        sources[recipe.name] = source

    for entry_point in sorted(_entry_points(), key=lambda ep: ep.name):
        source = f"entry point {entry_point.name!r} ({entry_point.value})"
        try:
            loaded: Any = entry_point.load()
        except Exception as exc:
            log.warning("skipping broken recipe %s: %s: %s", source, type(exc).__name__, exc)
            continue
        if not isinstance(loaded, Recipe):
            log.warning(
                "skipping recipe %s: it loads a %s, not a Recipe", source, type(loaded).__name__
            )
            continue
        if loaded.name != entry_point.name:
            log.warning(
                "%s loads a recipe named %r; it is registered under %r",
                source,
                loaded.name,
                loaded.name,
            )
        add(loaded, source)

    for module_name in extra_modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot import recipe module {module_name!r}: {type(exc).__name__}: {exc}"
            ) from exc
        recipes = [value for value in vars(module).values() if isinstance(value, Recipe)]
        if not recipes:
            log.warning("recipe module %r defines no Recipe objects", module_name)
        for recipe in recipes:
            add(recipe, f"module {module_name!r}")

    return MappingProxyType(found)
