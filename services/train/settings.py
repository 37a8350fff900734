"""The train service's settings: which compute trains which recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from shared.service import WorkerSettings

ComputeMode = Literal["in_process", "subprocess", "azureml"]

# The folder holding the ``shared``/``services``/``recipes`` packages: the Azure ML code snapshot.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class TrainSettings(WorkerSettings):
    """``RETRAINER_COMPUTE_CPU`` / ``RETRAINER_COMPUTE_GPU`` map a recipe's ``compute`` to:

    * ``in_process``: train in the worker's own process (light recipes);
    * ``subprocess``: the train entry point as a child process of the worker, with a timeout and
      cancellation (a local GPU, or isolating a heavy library from the worker);
    * ``azureml``: an Azure ML command job; the worker submits it and returns, and the job's
      ``RunStatusChanged`` event (or polling) completes the stage.
    """

    compute_cpu: ComputeMode = "in_process"
    compute_gpu: ComputeMode = "subprocess"

    # subprocess: a job running longer is killed and the stage fails (retryable).
    training_timeout_s: float = 6 * 3600.0
    # How often training jobs handed to Azure ML are polled when no event arrives.
    training_poll_interval_s: float = 60.0
    # How long the job follower waits for compute events per turn.
    training_receive_wait_s: float = 0.5

    azureml_subscription_id: str | None = None
    azureml_resource_group: str | None = None
    azureml_workspace: str | None = None
    azureml_compute: str = "gpu-cluster"
    azureml_environment: str = "azureml:retrainer-train@latest"
    azureml_code_dir: Path = PROJECT_ROOT
    azureml_instance_type: str | None = None
    # The Azure ML datastore registered on the blob container ``artifacts``: the job reads the
    # split and writes the model through it.
    azureml_datastore: str = "retrainer_artifacts"

    def compute_for(self, recipe_compute: str) -> ComputeMode:
        return self.compute_gpu if recipe_compute == "gpu" else self.compute_cpu

    @property
    def uses_azureml(self) -> bool:
        return "azureml" in (self.compute_cpu, self.compute_gpu)
