"""Register: the trained model -> a new model version carrying the run's lineage."""

from __future__ import annotations

import json

from services.train import TRAINING_RECORD
from shared.bootstrap import create_registry
from shared.data_assets.port import INPUT as DATA_ASSET_INPUT
from shared.settings import CommonSettings
from shared.tracking import METRIC_TAG_PREFIX, ModelRegistry, registry_warm_up
from shared.worker import StageContext, StageHandler, StageResult, StageSpec

REGISTRATION_RECORD = "registration.json"


def make_handler(registry: ModelRegistry, *, code_version: str) -> StageHandler:
    def register(ctx: StageContext) -> StageResult:
        training = json.loads((ctx.input_dirs["model"] / TRAINING_RECORD).read_text())
        inputs = ctx.command.inputs
        lineage = {
            "recipe": ctx.recipe.name,
            "recipe_version": ctx.recipe.version,
            "code_version": code_version,
            "data": inputs.get("data", ""),
            "dataset_version": inputs.get("dataset", ""),
            "split_version": inputs.get("split", ""),
            "params": json.dumps(ctx.command.params, sort_keys=True),
            "mlflow_run_id": training["mlflow_run_id"],
            "training_output": inputs.get("model", ""),
        }
        entity = ctx.command.entity
        if entity is not None:
            lineage["entity"] = entity
        asset = inputs.get(DATA_ASSET_INPUT)
        if asset:
            # The data-asset version the model was trained on (``name@version``).
            asset_name, _, asset_version = asset.rpartition("@")
            lineage["data_asset"] = asset_name
            lineage["data_asset_version"] = asset_version
        metric_tags = {
            METRIC_TAG_PREFIX + k: repr(float(v)) for k, v in training["metrics"].items()
        }
        version = registry.create_model_version(
            ctx.recipe.registered_model_name(entity),
            model_uri=training["model_uri"],
            run_id=training["mlflow_run_id"],
            correlation_id=str(ctx.command.correlation_id),
            tags={**lineage, **metric_tags},
        )
        registration = {
            "model_name": version.name,
            "model_version": version.version,
            "metrics": training["metrics"],
        }
        (ctx.output_dir / REGISTRATION_RECORD).write_text(json.dumps(registration, indent=2))
        return StageResult(details={"model_name": version.name, "model_version": version.version})

    return register


def build_spec(settings: CommonSettings) -> StageSpec:
    registry = create_registry(settings)
    handler = make_handler(registry, code_version=settings.code_version)
    # Registering is idempotent per run through the registry, not through the stage cache.
    return StageSpec(
        stage="register",
        inputs=("model",),
        output="registration",
        handler=handler,
        cacheable=False,
        warm_up=registry_warm_up(registry),
    )
