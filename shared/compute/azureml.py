"""Azure ML training compute: the train entry point as an Azure ML command job.

``build_command_job`` turns a ``TrainingJob`` into an ``azure.ai.ml`` ``Command`` that runs
``python -m services.train.entrypoint`` from ``code_dir`` (uploaded as a snapshot) in a
registered environment on a compute cluster, with the split folder mounted as the ``split``
input and the ``model`` output written to ``job.output_uri``. The job is named after the
recipe, correlation id and attempt, so submitting the same ``TrainingJob`` twice (a redelivered
message) finds the first job instead of starting a second one.

Completion is reported by Azure ML's ``Microsoft.MachineLearningServices.RunStatusChanged``
Event Grid events (``parse_run_status_changed``); ``get_job_status`` is the polling fallback.
azure-ai-ml is imported by this module only; ``azure-identity`` only in ``from_workspace``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Any

from azure.ai.ml import Input, Output, command
from azure.ai.ml.constants import AssetTypes
from azure.ai.ml.exceptions import MlException
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from shared.compute.azureml_events import (
    RUN_STATUS_CHANGED,
    STATUS_MAP,
    map_status,
    parse_run_status_changed,
)
from shared.compute.port import (
    PARAMS_BASE64_PREFIX,
    AutoMLResultError,
    ComputeRequestError,
    ComputeUnavailableError,
    JobHandle,
    JobNotFoundError,
    JobStatus,
    TrainingJob,
)

if TYPE_CHECKING:
    from azure.ai.ml import MLClient
    from azure.ai.ml.automl import ImageObjectDetectionJob
    from azure.ai.ml.entities import Command
    from azure.core.credentials import TokenCredential

BACKEND = "azureml"
# Where an AutoML parent run names its best child (a tag of the job's run), and where that child
# keeps its MLflow model.
BEST_CHILD_TAG = "automl_best_child_run_id"
AUTOML_MODEL_PATH = "outputs/mlflow-model"

COMMAND = (
    "python -m services.train.entrypoint"
    " --recipe ${{inputs.recipe}}"
    " --split ${{inputs.split}}"
    " --output ${{outputs.model}}"
    " --params-json ${{inputs.params}}"
    " --correlation-id ${{inputs.correlation_id}}"
    " --mlflow --experiment ${{inputs.experiment}}"
)

_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_.:@/-]+$")
_CODE_ASSET = re.compile(r"^azureml:(?P<name>[A-Za-z0-9_.-]+):(?P<version>[A-Za-z0-9_.-]+)$")
_NAME_UNSAFE = re.compile(r"[^a-z0-9_-]+")


def encode_params(params: Mapping[str, Any]) -> str:
    raw = json.dumps(dict(params), sort_keys=True, separators=(",", ":")).encode()
    return PARAMS_BASE64_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii")


def job_name_for(job: TrainingJob) -> str:
    """A deterministic Azure ML job name (lowercase letters, digits, '-', '_'; <= 255)."""
    raw = f"retrainer-{job.recipe}-{job.correlation_id}-{job.attempt}".lower()
    name = _NAME_UNSAFE.sub("-", raw)
    return name.strip("-_")[:255]


def _environment_reference(environment: str) -> str:
    """azure-ai-ml resolves ``name@label`` but takes ``azureml:name@label`` for an environment
    named ``azureml:name`` (it lists ``environments/azureml:name/versions``): drop the prefix
    there. ``azureml:name:version``, ARM ids and ``azureml://registries/...`` pass unchanged."""
    prefixed = environment.startswith("azureml:") and not environment.startswith("azureml://")
    return environment.removeprefix("azureml:") if prefixed and "@" in environment else environment


class AzureMLTrainingCompute:
    """``code_dir``: a local directory (uploaded as a snapshot, reused while its content hash is
    unchanged), or a registered code asset, ``azureml:name:version`` or its ARM id."""

    def __init__(
        self,
        ml_client: MLClient,
        *,
        compute_name: str,
        environment: str,
        code_dir: str,
        instance_type: str | None = None,
        mlflow_tracking_uri: str | None = None,
    ) -> None:
        """``mlflow_tracking_uri``: the workspace's MLflow, where AutoML logs its child runs
        (``automl_result`` reads the best one's metrics there)."""
        self._ml_client = ml_client
        self._compute_name = compute_name
        self._environment = environment
        self._code_dir = code_dir
        self._instance_type = instance_type
        self._mlflow_tracking_uri = mlflow_tracking_uri

    @classmethod
    def from_workspace(
        cls,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        *,
        credential: TokenCredential | None = None,
        compute_name: str,
        environment: str,
        code_dir: str,
        instance_type: str | None = None,
        mlflow_tracking_uri: str | None = None,
    ) -> AzureMLTrainingCompute:
        from azure.ai.ml import MLClient

        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        client = MLClient(credential, subscription_id, resource_group, workspace)
        return cls(
            client,
            compute_name=compute_name,
            environment=environment,
            code_dir=code_dir,
            instance_type=instance_type,
            mlflow_tracking_uri=mlflow_tracking_uri,
        )

    def build_command_job(self, job: TrainingJob) -> Command:
        for label, value in (
            ("recipe", job.recipe),
            ("correlation_id", job.correlation_id),
            ("experiment_name", job.experiment_name),
        ):
            if not _SHELL_SAFE.match(value):
                raise ComputeRequestError(f"{label} {value!r} is not safe on a command line")
        tags = {
            **dict(job.tags),
            "correlation_id": job.correlation_id,
            "recipe": job.recipe,
            "attempt": str(job.attempt),
        }
        return command(
            name=job_name_for(job),
            display_name=f"{job.recipe} {job.correlation_id}",
            description=f"retrainer: train {job.recipe} for run {job.correlation_id}",
            experiment_name=job.experiment_name,
            code=self._code_reference(),
            command=COMMAND,
            inputs={
                "recipe": job.recipe,
                "correlation_id": job.correlation_id,
                "experiment": job.experiment_name,
                "params": encode_params(job.params),
                "split": Input(type=AssetTypes.URI_FOLDER, path=job.input_uri),
            },
            outputs={"model": Output(type=AssetTypes.URI_FOLDER, path=job.output_uri)},
            environment=_environment_reference(self._environment),
            compute=self._compute_name,
            instance_type=self._instance_type,
            tags=tags,
        )

    def _code_reference(self) -> str:
        # azure-ai-ml takes a code string that is not an ARM id for a local path.
        asset = _CODE_ASSET.match(self._code_dir)
        if asset is None:
            return self._code_dir
        client = self._ml_client
        return (
            f"/subscriptions/{client.subscription_id}/resourceGroups/{client.resource_group_name}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{client.workspace_name}"
            f"/codes/{asset['name']}/versions/{asset['version']}"
        )

    def build_automl_job(self, job: TrainingJob) -> ImageObjectDetectionJob:
        """The AutoML image object-detection job ``job.automl`` asks for: trains on
        ``job.training_data`` (validated on ``job.validation_data`` if given, else on a
        ``validation_data_size`` share), within the limits, in auto mode or sweeping the
        search space; named like a command job, so a resubmission finds the first."""
        from azure.ai.ml import automl
        from azure.ai.ml.automl import ImageObjectDetectionSearchSpace
        from azure.ai.ml.sweep import BanditPolicy

        spec = job.automl
        if spec is None:
            raise ComputeRequestError("not an AutoML training job")
        if not job.training_data:
            raise ComputeRequestError("an AutoML job needs training data")
        validation = (
            None
            if job.validation_data is None
            else Input(type=AssetTypes.MLTABLE, path=job.validation_data)
        )
        tags = {
            **dict(job.tags),
            "correlation_id": job.correlation_id,
            "recipe": job.recipe,
            "attempt": str(job.attempt),
        }
        automl_job = automl.image_object_detection(
            name=job_name_for(job),
            display_name=f"{job.recipe} {job.correlation_id}",
            description=f"retrainer: AutoML {job.recipe} for run {job.correlation_id}",
            experiment_name=job.experiment_name,
            compute=self._compute_name,
            training_data=Input(type=AssetTypes.MLTABLE, path=job.training_data),
            validation_data=validation,
            # AutoML holds out this share only when it is given no validation data.
            validation_data_size=spec.validation_data_size if validation is None else None,
            target_column_name=spec.target_column_name,
            primary_metric=spec.primary_metric,
            tags=tags,
        )
        automl_job.set_limits(
            timeout_minutes=spec.timeout_minutes,
            max_trials=spec.max_trials,
            max_concurrent_trials=spec.max_concurrent_trials,
        )
        if spec.search_space is not None:
            try:
                subspaces = [
                    ImageObjectDetectionSearchSpace(**_distributions(subspace))
                    for subspace in spec.search_space
                ]
            except (TypeError, ValueError) as exc:
                raise ComputeRequestError(f"invalid AutoML search space: {exc}") from None
            automl_job.extend_search_space(subspaces)
            automl_job.set_sweep(
                sampling_algorithm=spec.sampling_algorithm,
                early_termination=BanditPolicy(
                    evaluation_interval=spec.early_termination_evaluation_interval,
                    slack_factor=spec.early_termination_slack_factor,
                    delay_evaluation=spec.early_termination_delay_evaluation,
                ),
            )
        return automl_job

    def automl_result(self, handle: JobHandle) -> dict[str, Any]:
        """The best child run of a succeeded AutoML job (named by the job's
        ``automl_best_child_run_id`` tag, else by that tag on the job's MLflow run), its MLflow
        model and its metrics."""
        with _translated(handle.job_id):
            azure_job = self._ml_client.jobs.get(handle.job_id)
        best = (getattr(azure_job, "tags", None) or {}).get(BEST_CHILD_TAG) or (
            getattr(azure_job, "properties", None) or {}
        ).get(BEST_CHILD_TAG)
        client = self._mlflow()
        try:
            if not best:
                best = client.get_run(handle.job_id).data.tags.get(BEST_CHILD_TAG)
            if not best:
                raise AutoMLResultError(
                    f"AutoML job {handle.job_id} names no best child run ({BEST_CHILD_TAG})"
                )
            child = client.get_run(str(best))
        except AutoMLResultError:
            raise
        except Exception as exc:
            if _mlflow_not_found(exc):
                raise AutoMLResultError(
                    f"AutoML job {handle.job_id}: its run or best child {best} is not in MLflow"
                ) from exc
            raise ComputeUnavailableError(
                f"reading AutoML job {handle.job_id}'s best child from MLflow: {exc}"
            ) from exc
        metrics = {k: float(v) for k, v in child.data.metrics.items()}
        return {
            "mlflow_run_id": child.info.run_id,
            "model_uri": f"runs:/{child.info.run_id}/{AUTOML_MODEL_PATH}",
            "experiment_id": child.info.experiment_id,
            "metrics": metrics,
            "automl_job": handle.job_id,
        }

    def _mlflow(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(self._mlflow_tracking_uri)

    def begin_training(self, job: TrainingJob) -> JobHandle:
        command_job: Command | ImageObjectDetectionJob = (
            self.build_command_job(job) if job.automl is None else self.build_automl_job(job)
        )
        name = str(command_job.name)
        with _translated(name):
            try:
                existing = self._ml_client.jobs.get(name)
            except ResourceNotFoundError:
                existing = None
            if existing is None:
                try:
                    created = self._ml_client.jobs.create_or_update(command_job)
                except ResourceNotFoundError as exc:
                    # Not the job: the workspace, environment or code it refers to.
                    raise ComputeRequestError(
                        f"Azure ML job {name} refers to something missing: {exc.message}"
                    ) from exc
                name = str(created.name or name)
        return JobHandle(job_id=name, backend=BACKEND)

    def get_job_status(self, handle: JobHandle) -> JobStatus:
        with _translated(handle.job_id):
            azure_job = self._ml_client.jobs.get(handle.job_id)
        status = getattr(azure_job, "status", None)
        if isinstance(status, Enum):  # the SDK's JobStatus, a str enum
            status = status.value
        message = ""
        if STATUS_MAP.get(status or "") == "failed":
            message = f"Azure ML job {handle.job_id} {status}; see {azure_job.studio_url}"
        return map_status(status, message)

    def cancel_job(self, handle: JobHandle) -> None:
        with _translated(handle.job_id):
            # Only request it: the job's status (events, get_job_status) shows it cancelled; no
            # poller thread following the operation.
            self._ml_client.jobs.begin_cancel(handle.job_id, polling=False)


_DISTRIBUTIONS = {
    "choice": ("Choice", ("values",)),
    "uniform": ("Uniform", ("min_value", "max_value")),
    "loguniform": ("LogUniform", ("min_value", "max_value")),
    "quniform": ("QUniform", ("min_value", "max_value", "q")),
    "qloguniform": ("QLogUniform", ("min_value", "max_value", "q")),
    "normal": ("Normal", ("mu", "sigma")),
    "lognormal": ("LogNormal", ("mu", "sigma")),
    "qnormal": ("QNormal", ("mu", "sigma", "q")),
    "qlognormal": ("QLogNormal", ("mu", "sigma", "q")),
    "randint": ("Randint", ("upper",)),
}


def _distributions(subspace: Mapping[str, Any]) -> dict[str, Any]:
    """A search subspace as the SDK takes it: a scalar is a one-value choice, a list a choice,
    ``{"type": ..., ...}`` that distribution."""
    from azure.ai.ml import sweep

    converted: dict[str, Any] = {}
    for param, value in subspace.items():
        if isinstance(value, Mapping):
            kind = str(value.get("type", "")).lower()
            if kind not in _DISTRIBUTIONS:
                raise ValueError(
                    f"{param}: unknown distribution {kind!r}; one of {sorted(_DISTRIBUTIONS)}"
                )
            class_name, fields = _DISTRIBUTIONS[kind]
            unknown = sorted(set(value) - {"type", *fields})
            if unknown:
                raise ValueError(f"{param}: {kind} takes {list(fields)}, not {unknown}")
            converted[param] = getattr(sweep, class_name)(
                **{k: v for k, v in value.items() if k != "type"}
            )
        elif isinstance(value, list | tuple):
            converted[param] = sweep.Choice(list(value))
        else:
            converted[param] = sweep.Choice([value])
    return converted


def _mlflow_not_found(error: BaseException) -> bool:
    return getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


@contextmanager
def _translated(job_id: str) -> Iterator[None]:
    """azure-core / azure-ai-ml exceptions -> the port's errors, decided by type and status."""
    try:
        yield
    except ResourceNotFoundError:
        raise JobNotFoundError(job_id) from None
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise ComputeUnavailableError(f"Azure ML unreachable: {exc}") from exc
    except HttpResponseError as exc:
        code = exc.status_code or 0
        if _transient(exc):
            raise ComputeUnavailableError(f"Azure ML busy (HTTP {code}): {exc.message}") from exc
        raise ComputeRequestError(
            f"Azure ML rejected the request (HTTP {code}): {exc.message}"
        ) from exc
    except MlException as exc:
        # The SDK wraps some network failures (e.g. uploading the code snapshot) in its own
        # exception: those are worth another attempt, a refused job spec is not.
        cause = exc.inner_exception or exc.__cause__ or exc.__context__
        if _transient(cause):
            raise ComputeUnavailableError(f"Azure ML call failed: {_plain(exc)}") from exc
        raise ComputeRequestError(f"invalid Azure ML job: {_plain(exc)}") from exc
    except AzureError as exc:
        raise ComputeUnavailableError(f"Azure ML call failed: {exc}") from exc


def _transient(error: BaseException | None) -> bool:
    """Worth another attempt: a connection failure, a timeout, HTTP 408, 429 or 5xx."""
    if isinstance(error, HttpResponseError) and not isinstance(error, ResourceNotFoundError):
        code = error.status_code or 0
        return code in (408, 429) or code >= 500
    return isinstance(
        error, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError
    )


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _plain(error: BaseException) -> str:
    """The SDK colours its messages for terminals; error texts travel in events and logs."""
    return _ANSI_ESCAPE.sub("", str(error))


__all__ = [
    "BACKEND",
    "COMMAND",
    "RUN_STATUS_CHANGED",
    "STATUS_MAP",
    "AzureMLTrainingCompute",
    "encode_params",
    "job_name_for",
    "map_status",
    "parse_run_status_changed",
]
