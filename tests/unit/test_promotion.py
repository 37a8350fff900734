import dataclasses

from services.tag import decide_promotion
from shared.tracking import ModelVersionRecord
from tests.recipe_fixtures import echo_recipe


def champion(version: str, score: float | None) -> ModelVersionRecord:
    tags = {} if score is None else {"metric.score": repr(score)}
    return ModelVersionRecord(name="echo", version=version, run_id="r", tags=tags)


def test_first_model_passing_the_gate_is_promoted() -> None:
    decision = decide_promotion(echo_recipe, "1", {"score": 0.5}, None)
    assert decision.promote
    assert "first model" in decision.reason


def test_gate_failure_blocks_promotion_even_without_champion() -> None:
    decision = decide_promotion(echo_recipe, "1", {"score": -1.0}, None)
    assert not decision.promote
    assert "score=-1 is not >= 0" in decision.reason


def test_missing_gate_metric_blocks_promotion() -> None:
    decision = decide_promotion(echo_recipe, "1", {"other": 1.0}, None)
    assert not decision.promote
    assert "score missing" in decision.reason


def test_better_candidate_replaces_champion() -> None:
    decision = decide_promotion(echo_recipe, "2", {"score": 0.9}, champion("1", 0.5))
    assert decision.promote
    assert "beats champion v1" in decision.reason


def test_equal_or_worse_candidate_keeps_champion() -> None:
    assert not decide_promotion(echo_recipe, "2", {"score": 0.5}, champion("1", 0.5)).promote
    worse = decide_promotion(echo_recipe, "2", {"score": 0.1}, champion("1", 0.5))
    assert not worse.promote
    assert "not higher than champion v1" in worse.reason


def test_lower_is_better_recipes_compare_the_other_way() -> None:
    recipe = dataclasses.replace(
        echo_recipe, greater_is_better=False, quality_gate=echo_recipe.quality_gate
    )
    assert decide_promotion(recipe, "2", {"score": 0.1}, champion("1", 0.5)).promote
    assert not decide_promotion(recipe, "2", {"score": 0.9}, champion("1", 0.5)).promote


def test_reprocessing_the_champion_itself_is_idempotent() -> None:
    assert decide_promotion(echo_recipe, "3", {"score": 0.1}, champion("3", 0.9)).promote


def test_champion_without_recorded_metric_is_replaced() -> None:
    assert decide_promotion(echo_recipe, "2", {"score": 0.1}, champion("1", None)).promote


def test_a_tie_goes_to_the_older_version_whichever_is_tagged_first() -> None:
    newer_after_older = decide_promotion(echo_recipe, "5", {"score": 0.5}, champion("4", 0.5))
    assert not newer_after_older.promote
    older_after_newer = decide_promotion(echo_recipe, "4", {"score": 0.5}, champion("5", 0.5))
    assert older_after_newer.promote
    assert "ties champion v5 and is older" in older_after_newer.reason
    # By number, not by text: v10 is newer than v9.
    assert not decide_promotion(echo_recipe, "10", {"score": 0.5}, champion("9", 0.5)).promote
