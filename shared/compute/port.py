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


class ComputeUnavailableError(RetryableError):
    """The compute could not be reached or was busy (connection error, HTTP 429/5xx)."""


class ComputeRequestError(PermanentError):
    """The compute rejected the request (bad job spec, missing compute target, forbidden)."""


class JobNotFoundError(PermanentError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"training job not found: {job_id!r}")
        self.job_id = job_id


class MalformedComputeEventError(PermanentError):
    """A compute event (e.g. Azure ML RunStatusChanged) lacks the fields it must carry."""
