"""AutoML image object detection through the training-compute port: the job the real SDK
sends (only the HTTP boundary is faked, tests/azureml_fake.py), asserted field by field, in auto
mode and with a search space; cancel; and the best child run's MLflow model as the result,
read from a real MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from shared.compute.azureml import AUTOML_MODEL_PATH, BEST_CHILD_TAG, AzureMLTrainingCompute
from shared.compute.port import (
    AutoMLImageObjectDetection,
    AutoMLResultError,
    ComputeRequestError,
    JobHandle,
    TrainingJob,
)
from tests.azureml_fake import FakeAzureML, fake_ml_client, refuse_network, workspace_id

WS = workspace_id()
NAME = "retrainer-symbol_detection-6f1c2d3e-0000-4000-8000-000000000001-1"
TRAIN = "azureml:symbol_detection-training-data:3"
VALIDATION = "azureml://datastores/retrainer_artifacts/paths/cache/split/k/validation/"
JOB = TrainingJob(
    correlation_id="6f1c2d3e-0000-4000-8000-000000000001",
    recipe="symbol_detection",
    params={},
    input_uri="azureml://datastores/retrainer_artifacts/paths/cache/split/k/",
    output_uri="azureml://datastores/retrainer_artifacts/paths/cache/train/t/",
    experiment_name="retrainer-symbol_detection",
    tags={"split": "artifacts/cache/split/k"},
    automl=AutoMLImageObjectDetection(),
    training_data=TRAIN,
)
SEARCH_SPACE = (
    {
        "model_name": "yolov5",
        "learning_rate": {"type": "uniform", "min_value": 0.0001, "max_value": 0.01},
        "model_size": ["small", "medium"],
    },
    {
        "model_name": {"type": "choice", "values": ["fasterrcnn_resnet50_fpn"]},
        "learning_rate": {"type": "loguniform", "min_value": -9.2, "max_value": -4.6},
        "optimizer": ["sgd", "adam"],
        "min_size": [600, 800],
    },
)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeAzureML]:
    fake = FakeAzureML()
    monkeypatch.chdir(tmp_path)
    with refuse_network():
        yield fake
    assert fake.unexpected == [], "requests the fake does not serve"


def _compute(fake: FakeAzureML, tracking_uri: str | None = None) -> AzureMLTrainingCompute:
    return AzureMLTrainingCompute(
        fake_ml_client(fake),
        compute_name="gpu-cluster",
        environment="azureml:retrainer-train@latest",
        code_dir="azureml:retrainer-src:3",
        mlflow_tracking_uri=tracking_uri,
    )


def _put(fake: FakeAzureML) -> dict[str, Any]:
    assert fake.summary() == [f"GET /jobs/{NAME}", f"PUT /jobs/{NAME}"]
    body: dict[str, Any] = fake.requests[-1].body["properties"]
    return body


def test_an_automl_job_in_auto_mode_is_put_with_every_setting(fake: FakeAzureML) -> None:
    handle = _compute(fake).begin_training(JOB)
    assert handle == JobHandle(NAME, "azureml")

    job = _put(fake)
    assert job["jobType"] == "AutoML"
    assert job["computeId"] == f"{WS}/computes/gpu-cluster"
    assert job["experimentName"] == "retrainer-symbol_detection"
    assert job["displayName"] == f"symbol_detection {JOB.correlation_id}"
    assert job["description"] == f"retrainer: AutoML symbol_detection for run {JOB.correlation_id}"
    assert job["tags"] == {
        "split": "artifacts/cache/split/k",
        "correlation_id": JOB.correlation_id,
        "recipe": "symbol_detection",
        "attempt": "1",
    }
    task = job["taskDetails"]
    assert task["taskType"] == "ImageObjectDetection"
    assert task["primaryMetric"] == "MeanAveragePrecision"
    assert task["targetColumnName"] == "label"
    # The data-asset version, as the ARM id the SDK resolves it to.
    assert task["trainingData"] == {
        "jobInputType": "mltable",
        "uri": f"{WS}/data/symbol_detection-training-data/versions/3",
    }
    assert task.get("validationData") is None
    assert task["validationDataSize"] == 0.2
    assert task["limitSettings"] == {
        "maxConcurrentTrials": 4,
        "maxTrials": 8,
        "timeout": "PT3H",
    }
    # Auto mode: no search space, no sweep.
    assert not task.get("searchSpace")
    assert not task.get("sweepSettings")
    assert fake.jobs[NAME]["properties"]["status"] == "NotStarted"


def test_an_automl_job_with_a_search_space_sweeps_it(fake: FakeAzureML) -> None:
    spec = AutoMLImageObjectDetection(search_space=SEARCH_SPACE)
    job = TrainingJob(**{**JOB.__dict__, "automl": spec, "validation_data": VALIDATION})
    _compute(fake).begin_training(job)

    task = _put(fake)["taskDetails"]
    assert task["validationData"] == {"jobInputType": "mltable", "uri": VALIDATION}
    # Given validation data, AutoML holds nothing out of the training data.
    assert task.get("validationDataSize") is None
    assert task["limitSettings"] == {"maxConcurrentTrials": 4, "maxTrials": 8, "timeout": "PT3H"}
    assert task["sweepSettings"] == {
        "samplingAlgorithm": "random",
        "earlyTermination": {
            "policyType": "Bandit",
            "evaluationInterval": 2,
            "delayEvaluation": 6,
            "slackFactor": 0.2,
            "slackAmount": 0.0,
        },
    }
    assert task["searchSpace"] == [
        {
            "modelName": "choice('yolov5')",
            "learningRate": "uniform(0.0001,0.01)",
            "modelSize": "choice('small','medium')",
        },
        {
            "modelName": "choice('fasterrcnn_resnet50_fpn')",
            "learningRate": "loguniform(-9.2,-4.6)",
            "optimizer": "choice('sgd','adam')",
            "minSize": "choice(600,800)",
        },
    ]


@pytest.mark.parametrize(
    "subspace",
    [
        {"no_such_param": 1},
        {"learning_rate": {"type": "gaussian", "mu": 1}},
        {"learning_rate": {"type": "uniform", "min_value": 0.1, "low": 0}},
    ],
)
def test_an_invalid_search_space_is_a_request_error(
    fake: FakeAzureML, subspace: dict[str, Any]
) -> None:
    spec = AutoMLImageObjectDetection(search_space=(subspace,))
    job = TrainingJob(**{**JOB.__dict__, "automl": spec})
    with pytest.raises(ComputeRequestError, match="search space"):
        _compute(fake).build_automl_job(job)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_concurrent_trials"):
        AutoMLImageObjectDetection(max_trials=2, max_concurrent_trials=4)
    with pytest.raises(ValueError, match="validation_data_size"):
        AutoMLImageObjectDetection(validation_data_size=1.0)


def test_cancel_cancels_the_automl_job(fake: FakeAzureML) -> None:
    compute = _compute(fake)
    handle = compute.begin_training(JOB)
    compute.cancel_job(handle)
    assert fake.calls("POST", f"/jobs/{NAME}/cancel")
    assert compute.get_job_status(handle).state in ("cancelled", "running", "queued")


def _best_child(tracking_uri: str, tmp_path: Path) -> tuple[str, str]:
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("automl", artifact_location=(tmp_path / "a").as_uri())
    child = client.create_run(experiment, run_name=f"{NAME}_3")
    for key, value in {"mean_average_precision": 0.71, "precision": 0.8, "recall": 0.6}.items():
        client.log_metric(child.info.run_id, key, value)
    return child.info.run_id, experiment


def test_the_result_is_the_best_child_runs_mlflow_model(fake: FakeAzureML, tmp_path: Path) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    compute = _compute(fake, tracking_uri)
    handle = compute.begin_training(JOB)
    best, experiment = _best_child(tracking_uri, tmp_path)
    # What AutoML does when the parent finishes: it names its best child on the parent.
    fake.jobs[NAME]["properties"]["tags"][BEST_CHILD_TAG] = best
    fake.set_status(NAME, "Completed")

    assert compute.get_job_status(handle).state == "succeeded"
    result = compute.automl_result(handle)
    assert result == {
        "mlflow_run_id": best,
        "model_uri": f"runs:/{best}/{AUTOML_MODEL_PATH}",
        "experiment_id": experiment,
        "metrics": {"mean_average_precision": 0.71, "precision": 0.8, "recall": 0.6},
        "automl_job": NAME,
    }


def test_a_job_naming_no_best_child_has_no_result(fake: FakeAzureML, tmp_path: Path) -> None:
    compute = _compute(fake, f"sqlite:///{tmp_path / 'mlflow.db'}")
    handle = compute.begin_training(JOB)
    fake.set_status(NAME, "Completed")
    with pytest.raises(AutoMLResultError):
        compute.automl_result(handle)
