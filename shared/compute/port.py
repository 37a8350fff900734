"""The training-compute port: hand one training run to some compute and follow it.

A ``TrainingCompute`` starts the train entry point (``python -m services.train.entrypoint``)
somewhere else — a local subprocess or an Azure ML command job on a GPU cluster — and returns
at once with a ``JobHandle``. The caller follows the job with ``get_job_status`` (or with the
compute's own completion events) and may ``cancel_job`` it. The job reads the split folder at
``input_uri`` and writes ``result.json`` plus ``artifacts/`` under ``output_uri``.

Method names follow the Azure SDK verbs (``begin_*`` returns before the work is done).
Adapters translate their SDK's exceptions into the errors below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from shared.errors import PermanentError, RetryableError

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})

# What the entry point writes under the job's output folder.
RESULT_FILE = "result.json"
# Written instead when the job fails: {"error", "error_type", "retryable"}.
ERROR_FILE = "error.json"
ARTIFACTS_DIR = "artifacts"
# ``--params-json`` may be this prefix + URL-safe base64 of the JSON (shell-safe).
PARAMS_BASE64_PREFIX = "base64:"


SearchSpace = tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class AutoMLImageObjectDetection:
    """An Azure ML AutoML image object-detection task (``azure.ai.ml.automl``), which a recipe
    may ask for instead of its own ``train`` when it trains on Azure ML (``Recipe.automl``).

    ``search_space`` None is AutoML's auto mode (it picks models and hyperparameters within
    the limits); otherwise each entry is one subspace, param -> a value, a list of values, or
    a distribution ``{"type": "choice"|"uniform"|"loguniform"|"quniform"|"qloguniform"|
    "normal"|"lognormal"|"randint", ...}`` (``values``; ``min_value``/``max_value``; ``q``;
    ``mu``/``sigma``; ``upper``), e.g. ``{"model_name": "yolov5", "learning_rate":
    {"type": "uniform", "min_value": 0.0001, "max_value": 0.01}}``; it is swept with
    ``sampling_algorithm`` and a Bandit early-termination policy.
    """

    primary_metric: str = "mean_average_precision"
    max_trials: int = 8
    max_concurrent_trials: int = 4
    timeout_minutes: int = 180
    # The share of the training data held out when the split made no validation table.
    validation_data_size: float = 0.2
    target_column_name: str = "label"
    search_space: SearchSpace | None = None
    sampling_algorithm: Literal["random", "grid", "bayesian"] = "random"
    # Bandit early termination (used with a search space).
    early_termination_slack_factor: float = 0.2
    early_termination_evaluation_interval: int = 2
    early_termination_delay_evaluation: int = 6

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent_trials <= self.max_trials:
            raise ValueError("max_concurrent_trials must be between 1 and max_trials")
        if self.timeout_minutes < 1:
            raise ValueError("timeout_minutes must be at least 1")
        if not 0.0 < self.validation_data_size < 1.0:
            raise ValueError("validation_data_size must be between 0 and 1")


@dataclass(frozen=True)
class TrainingJob:
    """One training run to start.

    ``input_uri`` is the split folder: a local path for local compute; for Azure ML an
    ``azureml://datastores/<ds>/paths/<path>`` URI or an
    ``https://<account>.blob.core.windows.net/<container>/<path>`` URL. ``output_uri`` is
    where the job writes ``result.json`` and ``artifacts/`` (same forms).
    """

    correlation_id: str
    recipe: str
    params: Mapping[str, Any]
    input_uri: str
    output_uri: str
    experiment_name: str
    # The stage attempt: a retry is a new job, a redelivery of the same attempt is not.
    attempt: int = 1
    tags: Mapping[str, str] = field(default_factory=dict)
    # An AutoML job instead of the train entry point (Azure ML only): it trains on
    # ``training_data`` (an ``azureml:<asset>:<version>`` data asset or a datastore URI of an
    # MLTable folder), validates on ``validation_data`` when given, and its best child run's
    # MLflow model is the result (``automl_result``).
    automl: AutoMLImageObjectDetection | None = None
    training_data: str = ""
    validation_data: str | None = None


@dataclass(frozen=True)
class JobHandle:
    """What ``begin_training`` returns: the backend's own job id (Azure ML: the job name)."""

    job_id: str
    backend: str


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    message: str = ""

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class TrainingCompute(Protocol):
    def begin_training(self, job: TrainingJob) -> JobHandle:
        """Start the job and return without waiting for it."""
        ...

    def get_job_status(self, handle: JobHandle) -> JobStatus:
        """The job's state now. Raises ``JobNotFoundError`` for an unknown handle."""
        ...

    def cancel_job(self, handle: JobHandle) -> None:
        """Ask the job to stop; a job already finished is left as it is."""
        ...


class AutoMLCompute(TrainingCompute, Protocol):
    def automl_result(self, handle: JobHandle) -> Mapping[str, Any]:
        """What a succeeded AutoML job produced, as the train entry point's ``result.json``
        would say it: ``mlflow_run_id`` and ``model_uri`` of its best child run's MLflow model,
        ``metrics`` of that run, ``experiment_id``. Raises ``ComputeUnavailableError`` (try
        again) or ``AutoMLResultError``."""
        ...


class ComputeUnavailableError(RetryableError):
    """The compute could not be reached or was busy (connection error, HTTP 429/5xx)."""


class ComputeRequestError(PermanentError):
    """The compute rejected the request (bad job spec, missing compute target, forbidden)."""


class JobNotFoundError(PermanentError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"training job not found: {job_id!r}")
        self.job_id = job_id


class AutoMLResultError(PermanentError):
    """A succeeded AutoML job whose best child run or model cannot be found."""


class MalformedComputeEventError(PermanentError):
    """A compute event (e.g. Azure ML RunStatusChanged) lacks the fields it must carry."""
