from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from recipes.base import Recipe
from shared import recipe_registry as registry
from shared.errors import ConfigurationError, UnknownRecipeError
from shared.recipe_registry import get_recipe, list_recipes

_MODULE = """
    import dataclasses

    from recipes.state_identifier import recipe as _base

    alpha = dataclasses.replace(_base, name="alpha")
    beta = dataclasses.replace(_base, name="beta")
    not_a_recipe = {"name": "gamma"}
"""


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    registry.clear_cache()
    yield
    registry.clear_cache()


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_entry_point_recipe_is_found() -> None:
    from recipes.state_identifier import recipe

    assert list_recipes()["state_identifier"] is recipe
    assert get_recipe("state_identifier") is recipe


def test_unknown_recipe_lists_the_known_names() -> None:
    with pytest.raises(UnknownRecipeError) as caught:
        get_recipe("nope")
    assert caught.value.name == "nope"
    assert "state_identifier" in caught.value.known
    assert "state_identifier" in str(caught.value)


def test_extra_module_recipes_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _write_module(tmp_path, monkeypatch, "extra_recipes_a", _MODULE)
    recipes = list_recipes([module])
    assert {"alpha", "beta", "state_identifier"} <= set(recipes)
    assert "gamma" not in recipes
    assert all(isinstance(r, Recipe) for r in recipes.values())
    assert get_recipe("beta", [module]).name == "beta"
    # Without the module those recipes are unknown.
    with pytest.raises(UnknownRecipeError):
        get_recipe("alpha")


def test_extra_module_can_override_an_entry_point_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    module = _write_module(
        tmp_path,
        monkeypatch,
        "extra_recipes_b",
        """
        import dataclasses

        from recipes.state_identifier import recipe as _base

        local = dataclasses.replace(_base, version="local-dev")
        """,
    )
    with caplog.at_level(logging.WARNING, logger="shared.recipe_registry"):
        found = get_recipe("state_identifier", (module,))
    assert found.version == "local-dev"
    assert "replaces" in caplog.text


def test_unimportable_extra_module_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="no_such_recipe_module_xyz"):
        list_recipes(["no_such_recipe_module_xyz"])


def test_broken_entry_points_are_logged_and_skipped(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    group = registry.ENTRY_POINT_GROUP
    entry_points = [
        metadata.EntryPoint("broken", "no_such_module_xyz:recipe", group),
        metadata.EntryPoint("wrong_type", "os:sep", group),
        metadata.EntryPoint("state_identifier", "recipes.state_identifier:recipe", group),
    ]
    monkeypatch.setattr(registry, "_entry_points", lambda: entry_points)
    with caplog.at_level(logging.WARNING, logger="shared.recipe_registry"):
        recipes = list_recipes()
    assert list(recipes) == ["state_identifier"]
    assert "'broken'" in caplog.text
    assert "ModuleNotFoundError" in caplog.text
    assert "'wrong_type'" in caplog.text
    assert "not a Recipe" in caplog.text


def test_discovery_is_cached_per_module_tuple(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = registry._entry_points

    def counting() -> object:
        calls.append(1)
        return real()

    monkeypatch.setattr(registry, "_entry_points", counting)
    module = _write_module(tmp_path, monkeypatch, "extra_recipes_c", _MODULE)
    list_recipes()
    list_recipes(())
    assert len(calls) == 1
    list_recipes([module])
    list_recipes((module,))
    assert len(calls) == 2


def test_returned_dict_is_a_copy() -> None:
    first = list_recipes()
    first.clear()
    assert "state_identifier" in list_recipes()


def test_discovering_every_recipe_imports_none_of_their_ml_libraries() -> None:
    """Every worker and the coordinator discover all recipes when they start: a recipe's
    package must name its stage functions with ``recipes.base.lazy`` so that pandas,
    scikit-learn, TensorFlow... load with the first stage that needs them."""
    import subprocess
    import sys

    heavy = ["numpy", "pandas", "sklearn", "scipy", "tensorflow", "keras", "torch", "mlflow"]
    heavy += ["lightgbm", "onnxruntime", "PIL", "hyperopt", "pandera", "mltable"]
    heavy += ["keras_hub", "pycocotools"]
    code = (
        "import sys\n"
        "from shared.recipe_registry import list_recipes\n"
        "recipes = list_recipes()\n"
        f"print(sorted(recipes), [m for m in {heavy!r} if m in sys.modules])\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    names, imported = found.rsplit("] [", 1)
    assert "state_identifier" in names and "symbol_detection" in names
    assert imported.strip() == "]", f"discovering recipes imported {imported.strip()[:-1]}"


def test_a_lazy_stage_function_is_imported_on_its_first_call() -> None:
    from recipes.base import lazy

    function = lazy("json:dumps")
    assert repr(function) == "lazy('json:dumps')"
    assert function([1]) == "[1]"
    with pytest.raises(ValueError, match="is not 'package"):
        lazy("json.dumps")
    with pytest.raises(ModuleNotFoundError):
        lazy("no_such_module_here:f")()
