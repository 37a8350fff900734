"""Train: fit and evaluate the recipe on the split, log one MLflow run per pipeline run.

Where a recipe trains follows its ``compute`` (cpu|gpu) through ``TrainSettings``: in the
worker's process, in a child process of the worker (timeout, cancellation), or as an Azure ML
job that the worker submits without waiting for (``services/train/jobs.py`` finishes it).
Every way writes the same ``training.json`` that the register stage reads.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from services.train.jobs import (
    MODEL_OUTPUT,
    TRAINING_RECORD,
    TrainingJobs,
    failure_of,
    training_record,
)
from services.train.settings import TrainSettings
from shared.blobs.port import validate_prefix
from shared.bootstrap import create_blob_store, create_bus, create_registry
from shared.compute.port import ERROR_FILE, RESULT_FILE, TrainingCompute, TrainingJob
from shared.data_assets.port import INPUT as DATA_ASSET_INPUT
from shared.data_assets.port import TRAIN_TABLE, VALIDATION_TABLE
from shared.errors import BlobNotFoundError, ConfigurationError, StageCancelledError
from shared.recipe import Recipe
from shared.service import recipe_warm_up
from shared.tracking import ModelRegistry, registry_warm_up
from shared.worker import ARTIFACTS_CONTAINER, StageContext, StageHandler, StageResult, StageSpec

if TYPE_CHECKING:
    from shared.compute.azureml import AzureMLTrainingCompute

__all__ = ["TRAINING_RECORD", "build_spec", "make_handler"]

# How often a worker waiting on a local training subprocess looks at it.
SUBPROCESS_POLL_S = 0.2


def experiment_name(recipe: str) -> str:
    return f"retrainer-{recipe}"


def make_handler(
    settings: TrainSettings,
    *,
    registry: ModelRegistry | None,
    jobs: TrainingJobs,
    subprocess_compute: TrainingCompute | None,
    azureml_compute: TrainingCompute | None,
) -> StageHandler:
    def train(ctx: StageContext) -> StageResult:
        mode = settings.compute_for(ctx.recipe.compute)
        if mode == "in_process":
            return in_process(ctx)
        if mode == "subprocess":
            return in_subprocess(ctx)
        return on_azureml(ctx)

    def in_process(ctx: StageContext) -> StageResult:
        if registry is None:
            raise ConfigurationError("in_process training needs the MLflow registry")
        artifacts_dir = ctx.output_dir / "artifacts"
        artifacts_dir.mkdir()
        result = ctx.recipe.train(
            ctx.download_input("split"), artifacts_dir, ctx.params, ctx.recipe_context
        )
        record = registry.log_training(
            experiment_name=experiment_name(ctx.recipe.name),
            correlation_id=str(ctx.command.correlation_id),
            result=result,
            pip_requirements=ctx.recipe.pip_requirements,
            tags=_run_tags(ctx),
        )
        return _done(
            ctx,
            {
                "mlflow_run_id": record.run_id,
                "model_uri": record.model_uri,
                "experiment_id": record.experiment_id,
                "metrics": result.metrics,
            },
        )

    def in_subprocess(ctx: StageContext) -> StageResult:
        if subprocess_compute is None:
            raise ConfigurationError("subprocess training compute is not configured")
        job = _training_job(ctx, str(ctx.download_input("split")), str(ctx.output_dir))
        handle = subprocess_compute.begin_training(job)
        cancelled = ctx.recipe_context.cancelled
        status = subprocess_compute.get_job_status(handle)
        while not status.is_terminal:
            if cancelled.wait(SUBPROCESS_POLL_S):
                # The run was cancelled or the worker is stopping: its process group goes.
                subprocess_compute.cancel_job(handle)
                raise StageCancelledError(f"training job {handle.job_id} cancelled")
            status = subprocess_compute.get_job_status(handle)
        if status.state != "succeeded":
            raise failure_of(status, _read_json(ctx.output_dir / ERROR_FILE))
        result = _read_json(ctx.output_dir / RESULT_FILE)
        if result is None:
            raise failure_of(status, {"error": f"no {RESULT_FILE} written", "retryable": True})
        return _done(ctx, training_record(result))

    def on_azureml(ctx: StageContext) -> StageResult:
        if azureml_compute is None:
            raise ConfigurationError("Azure ML training compute is not configured")
        compute = azureml_compute
        job = _training_job(
            ctx,
            _datastore_uri(settings.azureml_datastore, ctx.input_prefix("split")),
            _datastore_uri(settings.azureml_datastore, ctx.output_prefix + "/"),
        )
        if ctx.recipe.automl is None:
            return jobs.submit(ctx.command, ctx.output_prefix, lambda: compute.begin_training(job))
        job = _automl_job(ctx, job, settings)
        return jobs.submit(
            ctx.command, ctx.output_prefix, lambda: compute.begin_training(job), kind="automl"
        )

    return train


def _run_tags(ctx: StageContext) -> dict[str, str]:
    return {
        "recipe": ctx.recipe.name,
        "recipe_version": ctx.recipe.version,
        "split": ctx.command.inputs["split"],
    }


def _training_job(ctx: StageContext, input_uri: str, output_uri: str) -> TrainingJob:
    return TrainingJob(
        correlation_id=str(ctx.command.correlation_id),
        recipe=ctx.recipe.name,
        params=ctx.params.model_dump(mode="json"),
        input_uri=input_uri,
        output_uri=output_uri,
        experiment_name=experiment_name(ctx.recipe.name),
        attempt=ctx.command.attempt,
        tags=_run_tags(ctx),
    )


def _automl_job(ctx: StageContext, job: TrainingJob, settings: TrainSettings) -> TrainingJob:
    """``job`` as the recipe's AutoML task: training data is the run's data-asset version when
    ``RETRAINER_DATA_ASSETS=azureml`` (``azureml:<name>:<version>``), else the split's
    ``train/`` MLTable by datastore URI (the table that version points at); validation data the
    split's ``validation/`` MLTable when the split wrote one."""
    assert ctx.recipe.automl is not None
    spec = ctx.recipe.automl(ctx.params)
    split = ctx.input_prefix("split")
    asset = ctx.command.inputs.get(DATA_ASSET_INPUT)
    # Only where the split workers are set to register Azure ML assets too (explicitly): else
    # the same table by its datastore URI (the asset still names it in the model's lineage).
    if asset and settings.data_assets == "azureml":
        name, _, version = asset.rpartition("@")
        training = f"azureml:{name}:{version}"
    else:
        training = _datastore_uri(settings.azureml_datastore, f"{split}{TRAIN_TABLE}/")
    validation = None
    try:
        ctx.blob_store.get_blob_properties(f"{split}{VALIDATION_TABLE}/MLTable")
    except BlobNotFoundError:
        pass
    else:
        validation = _datastore_uri(settings.azureml_datastore, f"{split}{VALIDATION_TABLE}/")
    return dataclasses.replace(job, automl=spec, training_data=training, validation_data=validation)


def _done(ctx: StageContext, training: dict[str, object]) -> StageResult:
    (ctx.output_dir / TRAINING_RECORD).write_text(json.dumps(training, indent=2))
    metrics = training["metrics"]
    assert isinstance(metrics, dict)
    return StageResult(
        metrics=metrics,
        details={"mlflow_run_id": training["mlflow_run_id"], "model_uri": training["model_uri"]},
    )


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        content: dict[str, object] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return content


def _datastore_uri(datastore: str, blob_prefix: str) -> str:
    """``artifacts/cache/split/<sha>/`` -> ``azureml://datastores/<ds>/paths/cache/split/<sha>/``."""
    container, path = validate_prefix(blob_prefix)
    if container != ARTIFACTS_CONTAINER:
        raise ConfigurationError(
            f"{blob_prefix!r} is not in the {ARTIFACTS_CONTAINER!r} container that the Azure ML"
            f" datastore {datastore!r} maps"
        )
    return f"azureml://datastores/{datastore}/paths/{path}"


def build_spec(settings: TrainSettings) -> StageSpec:
    modes = {settings.compute_cpu, settings.compute_gpu}
    subprocess_compute = None
    if "subprocess" in modes:
        from shared.compute.local import LocalTrainingCompute

        subprocess_compute = LocalTrainingCompute(
            settings.state_dir / "training-jobs",
            timeout_s=settings.training_timeout_s,
            recipe_modules=tuple(settings.recipe_modules),
            # Explicit: an inherited MLFLOW_TRACKING_URI (mlflow sets it process-wide) must
            # not send the job's run elsewhere.
            env={
                "RETRAINER_MLFLOW_TRACKING_URI": settings.resolved_mlflow_tracking_uri,
                "RETRAINER_MLFLOW_ARTIFACT_ROOT": str(settings.resolved_mlflow_artifact_root),
            },
        )
    azureml_compute = None
    if "azureml" in modes:
        azureml_compute = _azureml_compute(settings)
    jobs = TrainingJobs(
        bus=create_bus(settings),
        blob_store=create_blob_store(settings),
        remote=azureml_compute,
        poll_interval_s=settings.training_poll_interval_s,
        receive_wait_s=settings.training_receive_wait_s,
    )
    registry = create_registry(settings) if "in_process" in modes else None
    handler = make_handler(
        settings,
        registry=registry,
        jobs=jobs,
        subprocess_compute=subprocess_compute,
        azureml_compute=azureml_compute,
    )
    return StageSpec(
        stage="train",
        inputs=("split",),
        output=MODEL_OUTPUT,
        handler=handler,
        # Azure ML reads the split from blob storage itself: fetch it only to train here.
        download_inputs=False,
        # Jobs handed to Azure ML: followed to their end, and cancelled with their run.
        background=(jobs.run,) if azureml_compute else (),
        on_cancel=jobs.cancel if azureml_compute else None,
        warm_up=_warm_up(settings, registry),
    )


def _warm_up(
    settings: TrainSettings, registry: ModelRegistry | None
) -> tuple[Callable[[], object], ...]:
    """Before the worker reports ready: the train functions of the recipes it trains in its
    own process, and MLflow (import, store, the scikit-learn flavour) when it logs runs."""
    if registry is None:
        return ()
    modules = tuple(settings.recipe_modules)

    def in_process(recipe: Recipe) -> bool:
        return settings.compute_for(recipe.compute) == "in_process"

    return (
        *registry_warm_up(registry, ("sklearn",)),
        recipe_warm_up("train", modules, include=in_process),
        _import_plotting,
    )


def _import_plotting() -> None:
    """What the built-in recipes draw their report figures with, imported in the function
    that draws them (a plot can be turned off): a second of CPU the first run would pay."""
    if importlib.util.find_spec("matplotlib") is not None:
        importlib.import_module("matplotlib.figure")
        importlib.import_module("matplotlib.backends.backend_agg")


def _azureml_compute(settings: TrainSettings) -> AzureMLTrainingCompute:
    from shared.compute.azureml import AzureMLTrainingCompute

    workspace = (
        settings.azureml_subscription_id,
        settings.azureml_resource_group,
        settings.azureml_workspace,
    )
    if not all(workspace):
        raise ConfigurationError(
            "azureml training compute needs RETRAINER_AZUREML_SUBSCRIPTION_ID,"
            " RETRAINER_AZUREML_RESOURCE_GROUP and RETRAINER_AZUREML_WORKSPACE"
        )
    subscription_id, resource_group, workspace_name = (str(part) for part in workspace)
    return AzureMLTrainingCompute.from_workspace(
        subscription_id,
        resource_group,
        workspace_name,
        compute_name=settings.azureml_compute,
        environment=settings.azureml_environment,
        code_dir=str(settings.azureml_code_dir),
        instance_type=settings.azureml_instance_type,
        mlflow_tracking_uri=settings.resolved_mlflow_tracking_uri,
    )
