"""Entities and the model names they give: one model (and champion) per entity."""

from __future__ import annotations

import dataclasses

import pytest

from shared.entities import InvalidEntityError, validate_entity
from tests.recipe_fixtures import echo_recipe


@pytest.mark.parametrize(
    ("entity", "model"),
    [
        (None, "echo"),
        ("cygnus-buccinator", "echo.cygnus-buccinator"),
        ("site=A/species=B", "echo.site=A.species=B"),
        ("S_01", "echo.S_01"),
    ],
)
def test_the_model_name_is_the_recipe_model_plus_the_entity(entity: str | None, model: str) -> None:
    assert echo_recipe.registered_model_name(entity) == model


def test_a_recipe_declares_its_model_name_and_template() -> None:
    recipe = dataclasses.replace(
        echo_recipe, model_name="sdm", model_name_template="{model}-{entity}"
    )
    assert recipe.registered_model_name(None) == "sdm"
    assert recipe.registered_model_name("a/b") == "sdm-a.b"


@pytest.mark.parametrize("template", ["{model}", "{model}.{entity}.{other}", "{entity}{"])
def test_a_template_without_entity_or_with_unknown_fields_is_refused(template: str) -> None:
    with pytest.raises(ValueError, match="model_name_template"):
        dataclasses.replace(echo_recipe, model_name_template=template)


@pytest.mark.parametrize(
    ("entity", "complaint"),
    [
        ("a/..", "'..' part"),
        ("../a", "'..' part"),
        ("a//b", "empty"),
        ("", "empty"),
        ("sp:1", "':'"),
        ("Cygnus buccinator", "' '"),
        ("a.b", "'.'"),
        ("x'y", '"\'"'),
        ("-a", "starting with a letter or digit"),
        ("é", "'é'"),
        ("a" * 129, "longer than 128"),
    ],
)
def test_entities_mlflow_would_refuse_are_refused_naming_the_problem(
    entity: str, complaint: str
) -> None:
    with pytest.raises(InvalidEntityError, match=complaint.replace(".", r"\.").replace("'", "'")):
        validate_entity(entity)
    with pytest.raises(InvalidEntityError):
        echo_recipe.registered_model_name(entity)


def test_distinct_entities_never_share_a_model_name() -> None:
    names = {echo_recipe.registered_model_name(e) for e in ("a/b", "a-b", "a_b", "a=b", "ab")}
    assert len(names) == 5
