"""The train service's settings: which compute trains which recipes."""

from __future__ import annotations

from pathlib import Path

from shared.service import WorkerSettings
from shared.settings import ComputeMode

__all__ = ["PROJECT_ROOT", "ComputeMode", "TrainSettings"]

# The folder holding the ``shared``/``services``/``recipes`` packages: the Azure ML code snapshot.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class TrainSettings(WorkerSettings):
    """``RETRAINER_COMPUTE_CPU`` / ``RETRAINER_COMPUTE_GPU`` map a recipe's ``compute`` to:

    * ``in_process``: train in the worker's own process (light recipes);
    * ``subprocess``: the train entry point as a child process of the worker, with a timeout and
      cancellation (a local GPU, or isolating a heavy library from the worker);
    * ``azureml``: an Azure ML command job; the worker submits it and returns, and the job's
      ``RunStatusChanged`` event (or polling) completes the stage.

    ``compute_cpu``/``compute_gpu`` and the Azure ML workspace are in ``CommonSettings`` (the
    split worker and the coordinator read them too, for data assets).
    """

    # subprocess: a job running longer is killed and the stage fails (retryable).
    training_timeout_s: float = 6 * 3600.0
    # How often training jobs handed to Azure ML are polled when no event arrives.
    training_poll_interval_s: float = 60.0
    # How long the job follower waits for compute events per turn.
    training_receive_wait_s: float = 0.5

    azureml_compute: str = "gpu-cluster"
    azureml_environment: str = "azureml:retrainer-train@latest"
    azureml_code_dir: Path = PROJECT_ROOT
    azureml_instance_type: str | None = None

    def compute_for(self, recipe_compute: str) -> ComputeMode:
        return self.compute_gpu if recipe_compute == "gpu" else self.compute_cpu
