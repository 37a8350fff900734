"""The training-compute port, the entry point in-process and the Azure ML adapter (no network)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.ai.ml import load_compute, load_environment
from azure.ai.ml.entities import AmlCompute, Command
from azure.core.exceptions import ServiceRequestError

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
from tests.azureml_fake import (
    TENANT,
    FakeAzureML,
    UnexpectedRequest,
    fake_ml_client,
    refuse_network,
    workspace_id,
)

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


# --- Azure ML: real SDK objects, a fake workspace at the HTTP boundary --------------------------

NAME = f"retrainer-image_classification-{JOB.correlation_id}-1"
WS = workspace_id()
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeAzureML]:
    fake = FakeAzureML()
    fake.add_environment("retrainer-train", "1", "2", "7")
    fake.add_code("retrainer-src", "3")
    # Outside a git work tree the SDK adds no mlflow.source.git.* properties to the job.
    monkeypatch.chdir(tmp_path)
    with refuse_network():
        yield fake
    assert fake.unexpected == [], "requests the fake does not serve"


def _compute(fake: FakeAzureML, **kwargs: Any) -> AzureMLTrainingCompute:
    options: dict[str, Any] = {
        "compute_name": "gpu-cluster",
        "environment": "azureml:retrainer-train@latest",
        "code_dir": "azureml:retrainer-src:3",
        **kwargs,
    }
    client_options = options.pop("client_options", {})
    return AzureMLTrainingCompute(fake_ml_client(fake, **client_options), **options)


@pytest.fixture
def azure(fake: FakeAzureML) -> AzureMLTrainingCompute:
    return _compute(fake)


def test_ml_client_construction_sends_nothing(fake: FakeAzureML) -> None:
    _compute(fake)
    assert fake.requests == []


def test_nothing_reaches_the_network_but_through_the_fake(fake: FakeAzureML) -> None:
    with pytest.raises(UnexpectedRequest, match="outside the fake"):
        socket.create_connection(("management.azure.com", 443), timeout=1)


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


def test_begin_training_puts_a_command_job(
    azure: AzureMLTrainingCompute, fake: FakeAzureML
) -> None:
    assert azure.begin_training(JOB) == JobHandle(NAME, "azureml")

    # Look for the job, resolve the environment's label, create the job.
    assert fake.summary() == [
        f"GET /jobs/{NAME}",
        "GET /environments/retrainer-train/versions",
        f"PUT /jobs/{NAME}",
    ]
    _, latest, put = fake.requests
    assert all(API_VERSION.match(r.api_version or "") for r in fake.requests)
    assert all(r.headers["Authorization"].startswith("Bearer ") for r in fake.requests)
    assert latest.query["$orderBy"] == "createdtime desc" and latest.query["$top"] == "1"

    job = put.body["properties"]
    assert job["jobType"] == "Command"
    assert job["command"].startswith(
        "python -m services.train.entrypoint --recipe ${{inputs.recipe}} --split ${{inputs.split}}"
        " --output ${{outputs.model}} --params-json ${{inputs.params}}"
    )
    assert job["computeId"] == f"{WS}/computes/gpu-cluster"
    assert job["environmentId"] == f"{WS}/environments/retrainer-train/versions/7"
    assert job["codeId"] == f"{WS}/codes/retrainer-src/versions/3"
    assert job["experimentName"] == "retrainer-image_classification"
    assert JOB.correlation_id in job["displayName"]
    assert job["inputs"]["split"] == {"jobInputType": "uri_folder", "uri": SPLIT}
    assert job["outputs"]["model"] == {"jobOutputType": "uri_folder", "uri": MODEL}
    assert job["inputs"]["recipe"] == {"jobInputType": "literal", "value": "image_classification"}
    assert job["inputs"]["correlation_id"]["value"] == JOB.correlation_id
    assert entrypoint._load_params(job["inputs"]["params"]["value"]) == dict(JOB.params)
    assert job["tags"] == {
        "trigger": "blob",
        "correlation_id": JOB.correlation_id,
        "recipe": "image_classification",
        "attempt": "1",
    }
    assert "resources" not in job or not job["resources"].get("instanceType")
    assert fake.jobs[NAME]["properties"]["status"] == "NotStarted"


def test_begin_training_with_an_instance_type(fake: FakeAzureML) -> None:
    _compute(fake, instance_type="Standard_NC6s_v3").begin_training(JOB)
    (put,) = fake.calls("PUT")
    assert put.body["properties"]["resources"]["instanceType"] == "Standard_NC6s_v3"


def test_a_redelivered_begin_training_finds_the_job(
    azure: AzureMLTrainingCompute, fake: FakeAzureML
) -> None:
    handle = azure.begin_training(JOB)
    del fake.requests[:]
    assert azure.begin_training(JOB) == handle
    assert fake.summary() == [f"GET /jobs/{NAME}"]


def test_another_attempt_is_another_job(azure: AzureMLTrainingCompute, fake: FakeAzureML) -> None:
    first = azure.begin_training(JOB)
    second = azure.begin_training(dataclasses.replace(JOB, attempt=2))
    assert second.job_id == NAME.removesuffix("-1") + "-2" != first.job_id
    assert [r.path for r in fake.calls("PUT")] == [
        f"/jobs/{first.job_id}",
        f"/jobs/{second.job_id}",
    ]
    assert fake.calls("PUT")[1].body["properties"]["tags"]["attempt"] == "2"


@pytest.mark.parametrize(
    ("environment", "environment_id", "lists_versions"),
    [
        ("azureml:retrainer-train@latest", "retrainer-train/versions/7", True),
        ("retrainer-train@latest", "retrainer-train/versions/7", True),
        ("azureml:retrainer-train:2", "retrainer-train/versions/2", False),
        ("retrainer-train:2", "retrainer-train/versions/2", False),
        (f"{WS}/environments/retrainer-train/versions/1", "retrainer-train/versions/1", False),
    ],
)
def test_environment_references(
    fake: FakeAzureML, environment: str, environment_id: str, lists_versions: bool
) -> None:
    _compute(fake, environment=environment).begin_training(JOB)
    (put,) = fake.calls("PUT")
    assert put.body["properties"]["environmentId"] == f"{WS}/environments/{environment_id}"
    assert bool(fake.calls("GET", "/environments/")) == lists_versions


def test_an_unknown_environment_is_a_request_error(fake: FakeAzureML) -> None:
    with pytest.raises(ComputeRequestError, match="does not exist"):
        _compute(fake, environment="azureml:nope@latest").begin_training(JOB)
    assert fake.calls("GET", "/environments/nope/versions")
    assert fake.calls("PUT") == []


@pytest.mark.parametrize(
    "code", ["azureml:retrainer-src:3", f"{WS}/codes/retrainer-src/versions/3"]
)
def test_a_registered_code_asset_is_referenced_not_uploaded(fake: FakeAzureML, code: str) -> None:
    _compute(fake, code_dir=code).begin_training(JOB)
    (put,) = fake.calls("PUT")
    assert put.body["properties"]["codeId"] == f"{WS}/codes/retrainer-src/versions/3"
    assert fake.calls(path="/codes/") == []


def _code_dir(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    (code / "services" / "train").mkdir(parents=True)
    (code / "services" / "train" / "entrypoint.py").write_text("print('train')\n")
    return code


def test_a_local_code_dir_reuses_the_uploaded_snapshot(fake: FakeAzureML, tmp_path: Path) -> None:
    fake.snapshots_present = True
    _compute(fake, code_dir=str(_code_dir(tmp_path))).begin_training(JOB)

    # The SDK hashes the directory and finds the snapshot by content hash instead of uploading.
    lookup, fetch = fake.calls(path="/codes/")
    assert lookup.method == "GET" and lookup.path.endswith("/versions")
    assert re.fullmatch(r"[0-9a-f]{64}", lookup.query["hash"]) and lookup.query["hashVersion"]
    snapshot = f"/codes/snapshot-{lookup.query['hash'][:16]}/versions/1"
    assert (fetch.method, fetch.path) == ("GET", snapshot)
    (put,) = fake.calls("PUT")
    assert put.body["properties"]["codeId"] == WS + snapshot


def test_a_new_local_snapshot_would_be_uploaded_outside_the_fake(
    fake: FakeAzureML, tmp_path: Path
) -> None:
    # Unknown content: the SDK asks for an upload location, then would write the files to blob
    # storage with its own client, not through this transport. The fake stops there.
    with pytest.raises(ComputeRequestError, match="startPendingUpload"):
        _compute(fake, code_dir=str(_code_dir(tmp_path))).begin_training(JOB)
    assert fake.calls("PUT") == []
    assert len(fake.unexpected) == 1 and "startPendingUpload" in fake.unexpected[0]
    fake.unexpected.clear()


def test_get_job_status_maps_the_job_resource(
    azure: AzureMLTrainingCompute, fake: FakeAzureML
) -> None:
    handle = azure.begin_training(JOB)
    queued = azure.get_job_status(handle)
    assert queued == JobStatus("queued", "Azure ML status NotStarted")
    assert fake.requests[-1].path == f"/jobs/{NAME}"

    for azure_status, state in [*STATUS_MAP.items(), ("Paused", "running"), ("Unknown", "running")]:
        fake.set_status(NAME, azure_status)
        assert azure.get_job_status(handle).state == state, azure_status

    fake.set_status(NAME, "Failed")
    failed = azure.get_job_status(handle)
    assert failed.state == "failed"
    # The studio link from the job's services, with the tenant the SDK read from the token.
    assert f"https://ml.azure.com/runs/{NAME}?wsid={WS}" in failed.message
    assert TENANT in failed.message


def test_cancel_posts_cancel(azure: AzureMLTrainingCompute, fake: FakeAzureML) -> None:
    handle = azure.begin_training(JOB)
    del fake.requests[:]
    azure.cancel_job(handle)
    # Only the request: no poller following the operation's Location afterwards.
    assert fake.summary() == [f"POST /jobs/{NAME}/cancel"]
    assert fake.requests[0].body is None
    assert azure.get_job_status(handle).state == "cancelled"  # CancelRequested


def test_an_unknown_job_is_not_found(azure: AzureMLTrainingCompute, fake: FakeAzureML) -> None:
    with pytest.raises(JobNotFoundError):
        azure.get_job_status(JobHandle("nope", "azureml"))
    with pytest.raises(JobNotFoundError):
        azure.cancel_job(JobHandle("nope", "azureml"))
    assert fake.summary() == ["GET /jobs/nope", "POST /jobs/nope/cancel"]


def test_a_404_while_creating_is_not_job_not_found(
    azure: AzureMLTrainingCompute, fake: FakeAzureML
) -> None:
    # e.g. the workspace or an asset the job refers to is gone: the job itself never existed.
    fake.fail(404, method="PUT")
    with pytest.raises(ComputeRequestError, match=r"HTTP 404|missing"):
        azure.begin_training(JOB)


def _begin(azure: AzureMLTrainingCompute) -> None:
    azure.begin_training(JOB)


def _status(azure: AzureMLTrainingCompute) -> None:
    azure.get_job_status(JobHandle(NAME, "azureml"))


def _cancel(azure: AzureMLTrainingCompute) -> None:
    azure.cancel_job(JobHandle(NAME, "azureml"))


@pytest.mark.parametrize(
    ("operation", "method", "path"),
    [
        (_begin, "PUT", "/jobs/"),
        (_begin, "GET", "/jobs/"),
        (_begin, "GET", "/environments/"),
        (_status, "GET", "/jobs/"),
        (_cancel, "POST", "/cancel"),
    ],
    ids=["begin-put", "begin-get", "begin-environment", "status", "cancel"],
)
@pytest.mark.parametrize(
    ("status", "exception", "expected"),
    [
        (429, None, ComputeUnavailableError),
        (503, None, ComputeUnavailableError),
        (500, None, ComputeUnavailableError),
        (400, None, ComputeRequestError),
        (403, None, ComputeRequestError),
        (0, ServiceRequestError("connection refused"), ComputeUnavailableError),
    ],
    ids=["429", "503", "500", "400", "403", "unreachable"],
)
def test_http_errors_are_translated(
    azure: AzureMLTrainingCompute,
    fake: FakeAzureML,
    operation: Callable[[AzureMLTrainingCompute], None],
    method: str,
    path: str,
    status: int,
    exception: Exception | None,
    expected: type[Exception],
) -> None:
    fake.fail(status, method=method, path=path, exception=exception, headers={"Retry-After": "1"})
    with pytest.raises(expected) as raised:
        operation(azure)
    retryable = expected is ComputeUnavailableError
    assert isinstance(raised.value, RetryableError if retryable else PermanentError)
    assert fake.calls(method, path), "the failure came from the wire"


def test_the_sdk_pipeline_retries_a_transient_503(fake: FakeAzureML) -> None:
    # With azure-core's retries on (the production default), one 503 never reaches the adapter.
    azure = _compute(fake, client_options={"retry_total": 2})
    fake.fail(503, method="GET", path="/jobs/")
    azure.begin_training(JOB)
    assert fake.summary()[:2] == [f"GET /jobs/{NAME}", f"GET /jobs/{NAME}"]
    assert len(fake.calls("PUT")) == 1


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


@pytest.mark.parametrize(
    ("status", "exception", "expected"),
    [
        (503, None, ComputeUnavailableError),
        (0, ServiceRequestError("connection reset"), ComputeUnavailableError),
        (403, None, ComputeRequestError),
    ],
    ids=["503", "reset", "403"],
)
def test_a_failed_snapshot_upload_is_retryable_only_when_transient(
    fake: FakeAzureML,
    tmp_path: Path,
    status: int,
    exception: Exception | None,
    expected: type[Exception],
) -> None:
    # The SDK wraps failures of the code upload in its own MlException.
    fake.fail(status, method="POST", path="startPendingUpload", exception=exception)
    with pytest.raises(expected) as raised:
        _compute(fake, code_dir=str(_code_dir(tmp_path))).begin_training(JOB)
    assert "\x1b[" not in str(raised.value), "no terminal colour codes in error texts"
    assert fake.calls("PUT") == []
