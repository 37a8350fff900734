"""The training-compute port, the entry point in-process and the Azure ML adapter (no network)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.ai.ml import load_compute, load_environment
from azure.ai.ml.entities import AmlCompute, Command
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

from services.train import entrypoint
from shared.compute.azureml import (
    RUN_STATUS_CHANGED,
    STATUS_MAP,
    AzureMLTrainingCompute,
    map_status,
    parse_run_status_changed,
)
from shared.compute.port import (
    ComputeRequestError,
    ComputeUnavailableError,
    JobHandle,
    JobNotFoundError,
    JobStatus,
    MalformedComputeEventError,
    TrainingJob,
)
from shared.errors import PermanentError, RetryableError

ROOT = Path(__file__).resolve().parents[2]
SPLIT = "azureml://datastores/workspaceblobstore/paths/runs/abc/split/"
MODEL = "https://acct.blob.core.windows.net/models/runs/abc/model/"
JOB = TrainingJob(
    correlation_id="6f1c2d3e-0000-4000-8000-000000000001",
    recipe="image_classification",
    params={"epochs": 2, "note": 'it\'s {a} "b"'},
    input_uri=SPLIT,
    output_uri=MODEL,
    experiment_name="retrainer-image_classification",
    tags={"trigger": "blob"},
)


# --- the entry point, in-process ---------------------------------------------------------------


def _split(tmp_path: Path) -> Path:
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.json").write_text("[1, 2, 3]")
    return split


def _argv(tmp_path: Path, recipe: str, params: str) -> list[str]:
    return [
        "--recipe", recipe, "--split", str(_split(tmp_path)), "--output", str(tmp_path / "out"),
        "--params-json", params, "--correlation-id", "c1",
        "--recipe-module", "tests.recipe_fixtures",
    ]  # fmt: skip


def test_entrypoint_writes_result_json(tmp_path: Path) -> None:
    assert entrypoint.main(_argv(tmp_path, "echo", '{"scale": 2}')) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["metrics"] == {"score": 4.0}
    assert result["params"]["scale"] == 2.0
    assert result["correlation_id"] == "c1"
    assert (tmp_path / "out" / "artifacts").is_dir()


def test_entrypoint_accepts_base64_params(tmp_path: Path) -> None:
    encoded = "base64:" + base64.urlsafe_b64encode(b'{"scale": 3}').decode()
    assert entrypoint.main(_argv(tmp_path, "echo", encoded)) == 0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["metrics"]["score"] == 6.0


@pytest.mark.parametrize(
    ("recipe", "params", "expected"),
    [
        ("echo", '{"scale": "big"}', "invalid params"),
        ("echo", '{"unknown": 1}', "invalid params"),
        ("echo", "{nope", "not valid JSON"),
        ("echo", "[1]", "must be a JSON object"),
        ("nope", "{}", "unknown recipe 'nope'"),
    ],
)
def test_entrypoint_bad_input_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str, params: str, expected: str
) -> None:
    assert entrypoint.main(_argv(tmp_path, recipe, params)) == 2
    assert expected in capsys.readouterr().err


def test_entrypoint_other_failure_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert entrypoint.main(_argv(tmp_path, "echo", '{"fail_with": "transient"}')) == 1
    assert "OSError: disk hiccup" in capsys.readouterr().err


# --- Azure ML: the command job, built with the real SDK ----------------------------------------


class FakeJobs:
    """Stands in for MLClient.jobs (JobOperations) at the method level."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.created: list[Command] = []
        self.cancelled: list[str] = []
        self.error: Exception | None = None

    def get(self, name: str) -> Any:
        if self.error:
            raise self.error
        if name not in self.jobs:
            raise ResourceNotFoundError("not found")
        return self.jobs[name]

    def create_or_update(self, job: Command) -> Any:
        self.created.append(job)
        self.jobs[str(job.name)] = SimpleNamespace(
            name=job.name, status="NotStarted", studio_url="https://ml.azure.com/x"
        )
        return self.jobs[str(job.name)]

    def begin_cancel(self, name: str) -> None:
        self.get(name)
        self.cancelled.append(name)


@pytest.fixture
def fake_jobs() -> FakeJobs:
    return FakeJobs()


@pytest.fixture
def azure(fake_jobs: FakeJobs) -> AzureMLTrainingCompute:
    return AzureMLTrainingCompute(
        SimpleNamespace(jobs=fake_jobs),  # type: ignore[arg-type]
        compute_name="gpu-cluster",
        environment="azureml:retrainer-train@latest",
        code_dir=str(ROOT),
    )


def test_build_command_job_is_a_real_command(azure: AzureMLTrainingCompute) -> None:
    job = azure.build_command_job(JOB)
    assert isinstance(job, Command)

    spec = job._to_dict()
    assert spec["type"] == "command"
    assert spec["compute"] == "azureml:gpu-cluster"
    assert spec["environment"] == "azureml:retrainer-train@latest"
    assert spec["inputs"]["split"] == {"type": "uri_folder", "path": SPLIT}
    assert spec["outputs"]["model"] == {"type": "uri_folder", "path": MODEL}
    assert spec["inputs"]["recipe"] == "image_classification"
    command = spec["component"]["command"]
    assert command.startswith("python -m services.train.entrypoint --recipe ${{inputs.recipe}}")
    assert "--split ${{inputs.split}} --output ${{outputs.model}}" in command
    assert job.experiment_name == "retrainer-image_classification"

    rest = job._to_rest_object()  # what the SDK sends for a command node
    assert rest["computeId"] == "gpu-cluster"
    assert rest["tags"]["correlation_id"] == JOB.correlation_id
    assert rest["tags"]["trigger"] == "blob"
    assert rest["outputs"]["model"]["uri"] == MODEL
    assert rest["inputs"]["split"]["uri"] == SPLIT
    # The params survive the shell: shell-safe base64 that the entry point decodes.
    encoded = rest["inputs"]["params"]["value"]
    assert entrypoint._load_params(encoded) == dict(JOB.params)
    assert JOB.correlation_id in rest["display_name"]


def test_build_command_job_refuses_shell_unsafe_names(azure: AzureMLTrainingCompute) -> None:
    bad = TrainingJob("x; rm -rf /", "r", {}, SPLIT, MODEL, "e")
    with pytest.raises(ComputeRequestError):
        azure.build_command_job(bad)


def test_begin_get_cancel(azure: AzureMLTrainingCompute, fake_jobs: FakeJobs) -> None:
    handle = azure.begin_training(JOB)
    assert handle == JobHandle(f"retrainer-image_classification-{JOB.correlation_id}", "azureml")
    assert azure.get_job_status(handle).state == "queued"

    # A redelivered command finds the job instead of starting another one.
    assert azure.begin_training(JOB) == handle
    assert len(fake_jobs.created) == 1

    fake_jobs.jobs[handle.job_id].status = "Failed"
    failed = azure.get_job_status(handle)
    assert failed.state == "failed" and "https://ml.azure.com/x" in failed.message

    azure.cancel_job(handle)
    assert fake_jobs.cancelled == [handle.job_id]


def _http_error(status: int) -> HttpResponseError:
    error = HttpResponseError(message=f"HTTP {status}")
    error.status_code = status
    return error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ResourceNotFoundError("gone"), JobNotFoundError),
        (ServiceRequestError("dns"), ComputeUnavailableError),
        (_http_error(503), ComputeUnavailableError),
        (_http_error(429), ComputeUnavailableError),
        (_http_error(400), ComputeRequestError),
        (_http_error(403), ComputeRequestError),
    ],
)
def test_azure_errors_are_translated(
    azure: AzureMLTrainingCompute, fake_jobs: FakeJobs, error: Exception, expected: type
) -> None:
    fake_jobs.error = error
    with pytest.raises(expected) as raised:
        azure.get_job_status(JobHandle("j", "azureml"))
    retryable = expected is ComputeUnavailableError
    assert isinstance(raised.value, RetryableError if retryable else PermanentError)


@pytest.mark.parametrize(
    ("azure_status", "state"),
    [
        ("NotStarted", "queued"),
        ("Queued", "queued"),
        ("Preparing", "queued"),
        ("Provisioning", "queued"),
        ("Starting", "queued"),
        ("Running", "running"),
        ("Finalizing", "running"),
        ("Completed", "succeeded"),
        ("Failed", "failed"),
        ("NotResponding", "failed"),
        ("Canceled", "cancelled"),
        ("CancelRequested", "cancelled"),
        ("Paused", "running"),
        (None, "running"),
    ],
)
def test_status_mapping(azure_status: str | None, state: str) -> None:
    assert map_status(azure_status).state == state


def test_status_map_covers_the_documented_statuses() -> None:
    assert len(STATUS_MAP) == 12


# --- RunStatusChanged events -------------------------------------------------------------------

DATA = {"runId": "retrainer-x-1", "runStatus": "Completed", "experimentName": "retrainer-x"}


def test_run_status_changed_event_grid_schema() -> None:
    event = {
        "eventType": RUN_STATUS_CHANGED,
        "subject": "experiments/e1/runs/retrainer-x-1",
        "data": DATA,
    }
    assert parse_run_status_changed(event) == (
        "retrainer-x-1",
        JobStatus("succeeded", "Azure ML status Completed (retrainer-x)"),
    )


def test_run_status_changed_cloud_events_schema() -> None:
    event = {
        "specversion": "1.0",
        "type": RUN_STATUS_CHANGED,
        "data": {**DATA, "runStatus": "Failed"},
    }
    name, status = parse_run_status_changed(event) or ("", JobStatus("queued"))
    assert name == "retrainer-x-1" and status.state == "failed"


def test_other_events_are_ignored() -> None:
    assert (
        parse_run_status_changed({"eventType": "Microsoft.Storage.BlobCreated", "data": {}}) is None
    )
    assert (
        parse_run_status_changed({"type": "Microsoft.MachineLearningServices.RunCompleted"}) is None
    )


@pytest.mark.parametrize(
    "event",
    [
        {"eventType": RUN_STATUS_CHANGED},
        {"eventType": RUN_STATUS_CHANGED, "data": "x"},
        {"eventType": RUN_STATUS_CHANGED, "data": {"runStatus": "Completed"}},
        {"type": RUN_STATUS_CHANGED, "data": {"runId": "r"}},
        {"type": RUN_STATUS_CHANGED, "data": {"runId": 1, "runStatus": "Completed"}},
    ],
)
def test_malformed_run_status_changed(event: dict[str, Any]) -> None:
    with pytest.raises(MalformedComputeEventError):
        parse_run_status_changed(event)


# --- deploy/azureml ----------------------------------------------------------------------------


def test_compute_spec_loads_with_the_sdk() -> None:
    compute = load_compute(source=ROOT / "deploy/azureml/compute.yml")
    assert isinstance(compute, AmlCompute)
    assert compute.type == "amlcompute"
    assert compute.size == "Standard_NC6s_v3"
    assert (compute.min_instances, compute.max_instances) == (0, 4)
    assert compute.idle_time_before_scale_down == 120


def test_environment_loads_with_the_sdk() -> None:
    environment = load_environment(source=ROOT / "deploy/azureml/environment-asset.yml")
    conda = environment.conda_file
    assert isinstance(conda, dict)
    assert "python=3.11" in conda["dependencies"]
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert any(p.startswith("tensorflow[and-cuda]") for p in pip)
    assert not any(p.startswith("tensorflow-cpu") for p in pip)
    assert any(p.startswith("pydantic-settings") for p in pip)
