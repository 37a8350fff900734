"""Tag: promote the new model version to champion only if it is better and passes the gate.

The read-decide-write runs under the model's promotion lease (``shared.promotion``), so any
number of tag workers leave one champion, the best."""

from __future__ import annotations

import json
from collections.abc import Mapping

from services.register import REGISTRATION_RECORD
from shared.bootstrap import create_promotion_options, create_registry
from shared.history import append_run
from shared.promotion import Promotion, PromotionOptions, change_champion
from shared.recipe import Recipe
from shared.settings import CommonSettings
from shared.tracking import ModelRegistry, ModelVersionRecord, registry_warm_up
from shared.worker import StageContext, StageHandler, StageResult, StageSpec


def decide_promotion(
    recipe: Recipe,
    candidate_version: str,
    candidate_metrics: Mapping[str, float],
    champion: ModelVersionRecord | None,
) -> Promotion:
    """Promote a candidate that passes the gate and beats the champion on the primary metric;
    on a tie the older version (the lower number) is the champion, so the outcome does not
    depend on which of two equal versions was tagged first."""
    metric = recipe.primary_metric
    failures = recipe.quality_gate.failures(candidate_metrics)
    if failures:
        return Promotion(False, "quality gate failed: " + "; ".join(failures))
    if champion is None:
        return Promotion(True, "first model to pass the quality gate")
    if champion.version == candidate_version:
        return Promotion(True, "already champion")
    candidate = candidate_metrics[metric]
    current = champion.metric(metric)
    if current is None:
        return Promotion(True, f"champion v{champion.version} has no {metric}")
    direction = "higher" if recipe.greater_is_better else "lower"
    if recipe.is_better(candidate, current):
        return Promotion(
            True, f"{metric} {candidate:.6g} beats champion v{champion.version} ({current:.6g})"
        )
    if candidate == current and _older(candidate_version, champion.version):
        return Promotion(
            True,
            f"{metric} {candidate:.6g} ties champion v{champion.version} and is older",
        )
    return Promotion(
        False,
        f"{metric} {candidate:.6g} is not {direction} than champion "
        f"v{champion.version} ({current:.6g})",
    )


def _older(version: str, other: str) -> bool:
    try:
        return int(version) < int(other)
    except ValueError:  # registries number versions; anything else is not comparable
        return False


def make_handler(registry: ModelRegistry, *, options: PromotionOptions) -> StageHandler:
    def tag(ctx: StageContext) -> StageResult:
        registration = json.loads(
            (ctx.input_dirs["registration"] / REGISTRATION_RECORD).read_text()
        )
        name, version = registration["model_name"], registration["model_version"]
        change = change_champion(
            registry,
            ctx.blob_store,
            name,
            version,
            lambda champion: decide_promotion(
                ctx.recipe, version, registration["metrics"], champion
            ),
            actor=f"tag stage of run {ctx.command.correlation_id}",
            options=options,
        )
        details = {
            "model_name": name,
            "model_version": version,
            "promoted": change.promoted,
            "champion_version": change.champion_version,
            "reason": change.reason,
        }
        # The last stage: the run succeeds with it, so its row joins the profile history.
        inputs = ctx.command.inputs
        history = (
            append_run(
                ctx.blob_store,
                recipe=ctx.recipe.name,
                run_id=str(ctx.command.correlation_id),
                data=inputs.get("data", ""),
                dataset_version=inputs.get("dataset", ""),
                outcome={
                    "model_name": name,
                    "model_version": str(version),
                    "promoted": change.promoted,
                    f"metric_{ctx.recipe.primary_metric}": registration["metrics"].get(
                        ctx.recipe.primary_metric
                    ),
                },
            )
            if "dataset" in inputs
            else None
        )
        if history is not None:
            details["history_record"] = history
        return StageResult(details=details)

    return tag


def build_spec(settings: CommonSettings) -> StageSpec:
    registry = create_registry(settings)
    return StageSpec(
        stage="tag",
        inputs=("registration",),
        output="promotion",
        handler=make_handler(registry, options=create_promotion_options(settings)),
        cacheable=False,
        warm_up=registry_warm_up(registry),
    )
