"""LocalTrainingCompute end to end: the real entry point in a subprocess."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlflow
import pytest

from recipes.state_identifier import recipe as state_identifier
from shared.compute.local import LocalTrainingCompute
from shared.compute.port import JobHandle, JobNotFoundError, JobStatus, TrainingJob
from tests.waiting import WAIT_S


def _job(split: Path, output: Path, recipe: str, params: dict[str, object]) -> TrainingJob:
    return TrainingJob(
        correlation_id="run-1",
        recipe=recipe,
        params=params,
        input_uri=str(split),
        output_uri=str(output),
        experiment_name=f"retrainer-{recipe}",
        tags={"trigger": "test"},
    )


def _wait(compute: LocalTrainingCompute, handle: JobHandle, limit_s: float = 120) -> JobStatus:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = compute.get_job_status(handle)
        if status.is_terminal:
            return status
        time.sleep(0.1)
    raise AssertionError("job did not finish")


@pytest.fixture(scope="module")
def state_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("si")
    params = state_identifier.parse_params({})
    state_identifier.write_sample_data(root / "raw", 7)
    state_identifier.aggregate(root / "raw", root / "dataset", params)
    state_identifier.split(root / "dataset", root / "split", params)
    return root / "split"


@pytest.fixture
def echo_split(tmp_path: Path) -> Path:
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.json").write_text("[1, 2, 3]")
    return split


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module: creating its database costs seconds."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture
def compute(tmp_path: Path, state_dir: Path) -> LocalTrainingCompute:
    return LocalTrainingCompute(
        tmp_path / "jobs",
        # A training subprocess took 1 min 54 s at load 22: the job limit is the hang guard.
        timeout_s=WAIT_S,
        kill_grace_s=2,
        recipe_modules=("tests.recipe_fixtures",),
        env={
            "RETRAINER_STATE_DIR": str(state_dir),
            "RETRAINER_MLFLOW_TRACKING_URI": f"sqlite:///{state_dir / 'mlflow.db'}",
        },
    )


def test_state_identifier_trains_in_a_subprocess(
    compute: LocalTrainingCompute, state_split: Path, tmp_path: Path, state_dir: Path
) -> None:
    handle = compute.begin_training(_job(state_split, tmp_path / "out", "state_identifier", {}))
    # Returns without waiting: the subprocess cannot even have imported MLflow yet.
    assert handle.backend == "local"
    assert compute.get_job_status(handle).state == "running"

    status = _wait(compute, handle)

    assert status == JobStatus("succeeded")
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["recipe"] == "state_identifier"
    assert result["correlation_id"] == "run-1"
    assert result["metrics"]["silhouette"] > 0.2
    assert result["params"]["n_clusters"] == 3
    assert all((tmp_path / "out" / path).is_file() for path in result["artifacts"])
    # The job logged the run and its model where the worker's settings point.
    client = mlflow.MlflowClient(f"sqlite:///{state_dir / 'mlflow.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["correlation_id"] == "run-1"
    assert run.data.tags["trigger"] == "test"
    assert run.data.metrics["silhouette"] == result["metrics"]["silhouette"]
    assert result["model_uri"].startswith("models:/")
    assert not (tmp_path / "jobs" / handle.job_id).exists(), "a succeeded job's logs go"


def test_invalid_params_fail_with_the_message(
    compute: LocalTrainingCompute, state_split: Path, tmp_path: Path
) -> None:
    job = _job(state_split, tmp_path / "out", "state_identifier", {"n_clusters": 1})
    status = _wait(compute, compute.begin_training(job))

    assert status.state == "failed"
    assert "exit code 2" in status.message
    assert "n_clusters" in status.message
    assert not (tmp_path / "out" / "result.json").exists()
    # A failed job's logs stay for diagnosis, and it says why in error.json.
    [job_dir] = (tmp_path / "jobs").iterdir()
    assert "n_clusters" in (job_dir / "stderr.log").read_text()
    error = json.loads((tmp_path / "out" / "error.json").read_text())
    assert error["retryable"] is False and "n_clusters" in error["error"]


def test_unknown_recipe_fails_as_bad_input(
    compute: LocalTrainingCompute, echo_split: Path, tmp_path: Path
) -> None:
    status = _wait(compute, compute.begin_training(_job(echo_split, tmp_path / "o", "nope", {})))
    assert status.state == "failed"
    assert "exit code 2" in status.message
    assert "unknown recipe 'nope'" in status.message


def test_a_crash_fails_with_exit_code_1(
    compute: LocalTrainingCompute, echo_split: Path, tmp_path: Path
) -> None:
    job = _job(echo_split, tmp_path / "o", "echo", {"fail_with": "transient"})
    status = _wait(compute, compute.begin_training(job))
    assert status.state == "failed"
    assert "exit code 1" in status.message
    assert "disk hiccup" in status.message


def test_echo_recipe_via_recipe_module(
    compute: LocalTrainingCompute, echo_split: Path, tmp_path: Path
) -> None:
    job = _job(echo_split, tmp_path / "o", "echo", {"scale": 2})
    assert _wait(compute, compute.begin_training(job)).state == "succeeded"
    assert json.loads((tmp_path / "o" / "result.json").read_text())["metrics"] == {"score": 4.0}


def test_a_run_past_the_timeout_is_killed(echo_split: Path, tmp_path: Path) -> None:
    compute = LocalTrainingCompute(
        tmp_path / "jobs", timeout_s=1, kill_grace_s=2, recipe_modules=("tests.recipe_fixtures",)
    )
    handle = compute.begin_training(_job(echo_split, tmp_path / "o", "echo", {"sleep_s": 60}))
    status = _wait(compute, handle, limit_s=30)
    assert status == JobStatus("failed", "timed out after 1 s")
    assert compute.get_job_status(handle) == status  # final states stick


def test_cancel_kills_the_process_group(
    compute: LocalTrainingCompute, echo_split: Path, tmp_path: Path
) -> None:
    handle = compute.begin_training(_job(echo_split, tmp_path / "o", "echo", {"sleep_s": 60}))
    pid = compute._jobs[handle.job_id].process.pid
    time.sleep(0.5)

    compute.cancel_job(handle)

    assert compute.get_job_status(handle).state == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of the group is left
    compute.cancel_job(handle)  # a second cancel is a no-op
    assert compute.get_job_status(handle).state == "cancelled"


def test_unknown_handle(compute: LocalTrainingCompute) -> None:
    with pytest.raises(JobNotFoundError):
        compute.get_job_status(JobHandle("local-nope", "local"))
    with pytest.raises(JobNotFoundError):
        compute.cancel_job(JobHandle("x", "azureml"))
