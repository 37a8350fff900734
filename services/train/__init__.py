"""Train: fit and evaluate the recipe on the split, log one MLflow run per pipeline run."""

from __future__ import annotations

import json

from shared.settings import CommonSettings, create_registry
from shared.tracking import ModelRegistry
from shared.worker import StageContext, StageHandler, StageResult, StageSpec

TRAINING_RECORD = "training.json"


def make_handler(registry: ModelRegistry) -> StageHandler:
    def train(ctx: StageContext) -> StageResult:
        artifacts_dir = ctx.output_dir / "artifacts"
        artifacts_dir.mkdir()
        result = ctx.recipe.train(ctx.input_dirs["split"], artifacts_dir, ctx.params)
        record = registry.log_training(
            experiment_name=f"retrainer-{ctx.recipe.name}",
            correlation_id=str(ctx.command.correlation_id),
            result=result,
            pip_requirements=ctx.recipe.pip_requirements,
            tags={
                "recipe": ctx.recipe.name,
                "recipe_version": ctx.recipe.version,
                "split": ctx.command.inputs["split"],
            },
        )
        training = {
            "mlflow_run_id": record.run_id,
            "model_uri": record.model_uri,
            "experiment_id": record.experiment_id,
            "metrics": result.metrics,
        }
        (ctx.output_dir / TRAINING_RECORD).write_text(json.dumps(training, indent=2))
        return StageResult(
            metrics=result.metrics,
            details={"mlflow_run_id": record.run_id, "model_uri": record.model_uri},
        )

    return train


def build_spec(settings: CommonSettings) -> StageSpec:
    return StageSpec(
        stage="train",
        inputs=("split",),
        output="model",
        handler=make_handler(create_registry(settings)),
    )
