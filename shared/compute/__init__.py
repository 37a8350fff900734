"""Training compute: the port (``port.py``) and its adapters.

``local.py`` runs the train entry point as a subprocess; ``azureml.py`` submits it as an
Azure ML command job (``azure-ai-ml`` is imported only by that module).
"""

from shared.compute.port import (
    ARTIFACTS_DIR,
    RESULT_FILE,
    TERMINAL_STATES,
    ComputeRequestError,
    ComputeUnavailableError,
    JobHandle,
    JobNotFoundError,
    JobState,
    JobStatus,
    MalformedComputeEventError,
    TrainingCompute,
    TrainingJob,
)

__all__ = [
    "ARTIFACTS_DIR",
    "RESULT_FILE",
    "TERMINAL_STATES",
    "ComputeRequestError",
    "ComputeUnavailableError",
    "JobHandle",
    "JobNotFoundError",
    "JobState",
    "JobStatus",
    "MalformedComputeEventError",
    "TrainingCompute",
    "TrainingJob",
]
