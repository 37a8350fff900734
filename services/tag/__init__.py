"""Tag: promote the new model version to champion only if it is better and passes the gate."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from recipes.base import Recipe
from services.register import REGISTRATION_RECORD
from shared.bootstrap import create_registry
from shared.history import append_run
from shared.settings import CommonSettings
from shared.tracking import ModelRegistry, ModelVersionRecord
from shared.worker import StageContext, StageHandler, StageResult, StageSpec


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str


def decide_promotion(
    recipe: Recipe,
    candidate_version: str,
    candidate_metrics: Mapping[str, float],
    champion: ModelVersionRecord | None,
) -> Promotion:
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
    return Promotion(
        False,
        f"{metric} {candidate:.6g} is not {direction} than champion "
        f"v{champion.version} ({current:.6g})",
    )


def make_handler(registry: ModelRegistry) -> StageHandler:
    def tag(ctx: StageContext) -> StageResult:
        registration = json.loads(
            (ctx.input_dirs["registration"] / REGISTRATION_RECORD).read_text()
        )
        name, version = registration["model_name"], registration["model_version"]
        champion = registry.get_champion(name)
        promotion = decide_promotion(ctx.recipe, version, registration["metrics"], champion)
        if promotion.promote:
            registry.promote(name, version)
        details = {
            "model_name": name,
            "model_version": version,
            "promoted": promotion.promote,
            "champion_version": version if promotion.promote else (champion and champion.version),
            "reason": promotion.reason,
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
                    "promoted": promotion.promote,
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
    return StageSpec(
        stage="tag",
        inputs=("registration",),
        output="promotion",
        handler=make_handler(create_registry(settings)),
        cacheable=False,
    )
