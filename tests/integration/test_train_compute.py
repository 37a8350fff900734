"""The train stage on each compute: a deferred Azure ML job finished by its event or by polling,
cancelled by the coordinator's CancelStage, and a local subprocess with cancellation.

Real embedded bus, real local blob store, the real worker runtime and job follower. Azure ML is
replaced at the training-compute port here (its HTTP boundary is faked in
tests/unit/test_training_compute.py, where the job specs are checked with the real SDK).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from mlflow import MlflowClient

from services.train import make_handler
from services.train.jobs import RECORDS_PREFIX, TrainingJobs
from services.train.settings import ComputeMode, TrainSettings
from shared.blobs.local import LocalBlobStore
from shared.bus.port import OutgoingMessage
from shared.bus.servicebus import ServiceBusMessageBus
from shared.bus.sqlite import SqliteMessageBus
from shared.compute.azureml import AzureMLTrainingCompute
from shared.compute.azureml_events import RUN_STATUS_CHANGED
from shared.compute.local import LocalTrainingCompute
from shared.compute.port import (
    AutoMLImageObjectDetection,
    AutoMLResultError,
    ComputeUnavailableError,
    JobHandle,
    JobNotFoundError,
    JobStatus,
    TrainingJob,
)
from shared.messages import (
    CancelStage,
    Message,
    RunStage,
    StageFailed,
    StageProgress,
    StageStarted,
    StageSucceeded,
    decode,
    encode,
)
from shared.stage_logs import failure_log_blob
from shared.topology import (
    COMPUTE_EVENTS_TOPIC,
    CONTROL_TOPIC,
    COORDINATOR_SUBSCRIPTION,
    EVENTS_TOPIC,
    TRAIN_SUBSCRIPTION,
    build_topology,
    command_topic,
)
from shared.worker import StageSpec, Worker, receive_cancels
from tests.azureml_fake import FakeAzureML as FakeWorkspace
from tests.azureml_fake import fake_ml_client, refuse_network
from tests.hostile import undecodable_messages, unreadable_compute_events
from tests.recipe_fixtures import echo_recipe, only
from tests.servicebus_broker import ServiceBusTestBroker

LOCK_S = 2.0
SPLIT = "artifacts/cache/split/abc"
# The echo recipe as a GPU recipe: what the compute settings route.
gpu_echo = dataclasses.replace(echo_recipe, compute="gpu")


class FakeAzureML:
    """The training-compute port as Azure ML answers it: jobs by deterministic name."""

    def __init__(self) -> None:
        self.submitted: list[TrainingJob] = []
        self.status: dict[str, JobStatus] = {}
        self.cancelled: list[str] = []

    def begin_training(self, job: TrainingJob) -> JobHandle:
        job_id = f"retrainer-{job.recipe}-{job.correlation_id}-{job.attempt}"
        self.submitted.append(job)
        self.status.setdefault(job_id, JobStatus("queued"))
        return JobHandle(job_id, "azureml")

    def get_job_status(self, handle: JobHandle) -> JobStatus:
        if handle.job_id not in self.status:
            raise JobNotFoundError(handle.job_id)
        return self.status[handle.job_id]

    def cancel_job(self, handle: JobHandle) -> None:
        self.cancelled.append(handle.job_id)
        self.status[handle.job_id] = JobStatus("cancelled", "Azure ML status Canceled")


lookup = only(gpu_echo)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteMessageBus]:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S))
    yield bus
    bus.close()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "blobs")
    store.upload_blob(f"{SPLIT}/train.json", b"[1, 2, 3]")
    return store


@dataclasses.dataclass
class Train:
    worker: Worker
    jobs: TrainingJobs
    azure: FakeAzureML
    bus: SqliteMessageBus
    blobs: LocalBlobStore

    def send(self, **fields: Any) -> RunStage:
        command = RunStage.model_validate(
            {
                "correlation_id": uuid.uuid4(),
                "stage": "train",
                "attempt": 1,
                "recipe": "echo",
                "inputs": {"split": SPLIT},
                **fields,
            }
        )
        self.bus.send_messages(command_topic("train"), [encode(command)])
        return command

    def events(self) -> list[Message]:
        received = self.bus.receive_messages(
            EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=50, max_wait_time=0.2
        )
        for message in received:
            self.bus.complete_message(message)
        return [decode(m.body, m.application_properties) for m in received]

    def job_finishes(self, job: TrainingJob, result: dict[str, Any]) -> str:
        """What the Azure ML job does: write result.json through the datastore."""
        prefix = "artifacts/" + job.output_uri.split("/paths/", 1)[1].rstrip("/")
        self.blobs.upload_blob(f"{prefix}/result.json", json.dumps(result).encode())
        return prefix


def make_train(
    bus: SqliteMessageBus,
    blobs: LocalBlobStore,
    tmp_path: Path,
    *,
    compute_gpu: ComputeMode,
    local: LocalTrainingCompute | None = None,
    poll_interval_s: float = 3600,
) -> Train:
    settings = TrainSettings(state_dir=tmp_path / "state", compute_gpu=compute_gpu)
    azure = FakeAzureML()
    jobs = TrainingJobs(
        bus=bus,
        blob_store=blobs,
        remote=azure,
        poll_interval_s=poll_interval_s,
        receive_wait_s=0.1,
    )
    handler = make_handler(
        settings, registry=None, jobs=jobs, subprocess_compute=local, azureml_compute=azure
    )
    spec = StageSpec(
        "train", ("split",), "model", handler, download_inputs=False, on_cancel=jobs.cancel
    )
    worker = Worker(
        spec,
        bus=bus,
        blob_store=blobs,
        recipe_lookup=lookup,
        lock_duration_s=LOCK_S,
        receive_wait_s=0.2,
    )
    return Train(worker, jobs, azure, bus, blobs)


@pytest.fixture
def train(bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path) -> Train:
    return make_train(bus, blobs, tmp_path, compute_gpu="azureml")


RESULT = {
    "recipe": "echo",
    "metrics": {"score": 2.0},
    "mlflow_run_id": "run-abc",
    "model_uri": "models:/m-abc",
    "experiment_id": "7",
}


def run_status_changed(job_id: str, status: str) -> OutgoingMessage:
    """One Event Grid event as Event Grid delivers it to a Service Bus topic."""
    event_id = str(uuid.uuid4())
    event = {
        "id": event_id,
        "eventType": RUN_STATUS_CHANGED,
        "subject": f"experiments/x/runs/{job_id}",
        "eventTime": "2026-11-30T03:00:00Z",
        "dataVersion": "2",
        "data": {"runId": job_id, "runStatus": status, "experimentName": "retrainer-echo"},
    }
    return OutgoingMessage(body=json.dumps(event).encode(), message_id=event_id)


def test_a_gpu_recipe_is_submitted_and_the_worker_returns_at_once(train: Train) -> None:
    command = train.send(params={"scale": 2.0})

    assert train.worker.process_next()

    # No outcome: the job is out, nobody waits on it; the run learns which job it is.
    started, progress = train.events()
    assert isinstance(started, StageStarted)
    assert isinstance(progress, StageProgress)
    [job] = train.azure.submitted
    assert progress.details == {
        "compute_backend": "azureml",
        "compute_job_id": f"retrainer-echo-{command.correlation_id}-1",
    }
    assert job.correlation_id == str(command.correlation_id)
    assert job.attempt == 1
    assert job.params == {"scale": 2.0, "fail_with": None, "sleep_s": 0.0}
    assert job.input_uri == "azureml://datastores/retrainer_artifacts/paths/cache/split/abc/"
    assert job.output_uri.startswith("azureml://datastores/retrainer_artifacts/paths/cache/train/")
    assert job.experiment_name == "retrainer-echo"
    assert job.tags["split"] == SPLIT
    [record] = train.jobs.pending()
    assert record["job_id"] == f"retrainer-echo-{command.correlation_id}-1"

    # A redelivered command finds the recorded job instead of submitting another.
    again = train.jobs.submit(command, record["output_prefix"], lambda: pytest.fail("resubmit"))
    assert again.deferred and again.details["compute_job_id"] == record["job_id"]


def test_run_status_changed_completes_the_stage_and_fills_the_cache(train: Train) -> None:
    command = train.send()
    train.worker.process_next()
    train.events()
    [job] = train.azure.submitted
    job_id = train.azure.begin_training(job).job_id
    prefix = train.job_finishes(job, RESULT)

    train.bus.send_messages(COMPUTE_EVENTS_TOPIC, [run_status_changed(job_id, "Running")])
    train.jobs.receive_compute_events()
    assert train.events() == []  # not terminal: nothing yet

    train.bus.send_messages(COMPUTE_EVENTS_TOPIC, [run_status_changed(job_id, "Completed")])
    assert train.jobs.receive_compute_events() == 1

    [succeeded] = train.events()
    assert isinstance(succeeded, StageSucceeded)
    assert (succeeded.correlation_id, succeeded.attempt) == (command.correlation_id, 1)
    assert succeeded.outputs == {"model": prefix}
    assert succeeded.metrics == {"score": 2.0}
    assert succeeded.details["compute_job_id"] == job_id
    assert succeeded.details["model_uri"] == "models:/m-abc"
    training = json.loads(train.blobs.download_blob(f"{prefix}/training.json").data)
    assert training["mlflow_run_id"] == "run-abc"  # what the register stage reads
    assert train.jobs.pending() == []
    assert list(train.blobs.list_blobs(f"{RECORDS_PREFIX}/")) == []

    # The same split and params again: the train cache answers, no second job.
    train.send()
    train.worker.process_next()
    cached = [e for e in train.events() if isinstance(e, StageSucceeded)]
    assert cached[0].cached and cached[0].outputs == {"model": prefix}
    assert len(train.azure.submitted) == 2  # the two begin_training calls of this test


def test_polling_finds_a_failed_job_and_reports_its_error(train: Train) -> None:
    train.send()
    train.worker.process_next()
    train.events()
    [job] = train.azure.submitted
    job_id = f"retrainer-echo-{job.correlation_id}-1"
    prefix = "artifacts/" + job.output_uri.split("/paths/", 1)[1].rstrip("/")
    error = {
        "error": "row 3: not a number",
        "error_type": "DataValidationError",
        "retryable": False,
        "log": 'Traceback (most recent call last):\n  File "x.py", line 3\n'
        "DataValidationError: row 3 of https://a/b?sig=hush: not a number\n",
    }
    train.blobs.upload_blob(f"{prefix}/error.json", json.dumps(error).encode())

    assert train.jobs.poll() == 0  # still queued
    train.azure.status[job_id] = JobStatus("failed", "Azure ML status Failed")
    assert train.jobs.poll() == 1

    [failed] = train.events()
    assert isinstance(failed, StageFailed)
    assert failed.error == "DataValidationError: row 3: not a number"
    assert failed.retryable is False
    assert train.jobs.pending() == []
    # The job's traceback is kept as the attempt's log, redacted.
    log = train.blobs.download_blob(failure_log_blob(job.correlation_id, "train", 1)).data
    assert log.decode().startswith("Traceback") and b"sig=REDACTED" in log and b"hush" not in log


def test_a_failed_job_without_error_file_is_retryable_and_a_lost_job_too(train: Train) -> None:
    first = train.send()
    second = train.send(params={"scale": 3.0})
    train.worker.process_next()
    train.worker.process_next()
    train.events()
    train.azure.status[f"retrainer-echo-{first.correlation_id}-1"] = JobStatus(
        "failed", "Azure ML status NotResponding"
    )
    del train.azure.status[f"retrainer-echo-{second.correlation_id}-1"]

    assert train.jobs.poll() == 2

    failures = {e.correlation_id: e for e in train.events() if isinstance(e, StageFailed)}
    assert failures[first.correlation_id].retryable
    assert "NotResponding" in failures[first.correlation_id].error
    assert failures[second.correlation_id].retryable
    assert "not found" in failures[second.correlation_id].error


def test_cancel_stage_cancels_the_azure_ml_job(train: Train) -> None:
    command = train.send()
    train.worker.process_next()
    train.events()
    job_id = f"retrainer-echo-{command.correlation_id}-1"

    cancel = CancelStage(correlation_id=command.correlation_id, stage="train", attempt=1)
    train.bus.send_messages(CONTROL_TOPIC, [encode(cancel)])
    assert train.worker.receive_control() == 1
    assert train.azure.cancelled == [job_id]

    train.bus.send_messages(COMPUTE_EVENTS_TOPIC, [run_status_changed(job_id, "Canceled")])
    train.jobs.receive_compute_events()
    [failed] = train.events()
    assert isinstance(failed, StageFailed) and not failed.retryable
    assert failed.error_type == "TrainingJobRejectedError"
    assert "cancelled" in failed.error


def test_malformed_and_foreign_compute_events(train: Train) -> None:
    train.bus.send_messages(
        COMPUTE_EVENTS_TOPIC,
        [
            OutgoingMessage(body=b"not json", message_id="m1"),
            run_status_changed("someone-elses-job", "Completed"),
            OutgoingMessage(
                body=json.dumps({"eventType": RUN_STATUS_CHANGED, "data": {}}).encode(),
                message_id="m3",
            ),
        ],
    )

    assert train.jobs.receive_compute_events() == 3

    dead = train.bus.receive_messages(
        COMPUTE_EVENTS_TOPIC, TRAIN_SUBSCRIPTION, max_message_count=10, dead_letter=True
    )
    assert [m.dead_letter_reason for m in dead] == ["MalformedEvent"] * 2
    reasons = " | ".join(m.dead_letter_error_description or "" for m in dead)
    assert "compute event is not JSON" in reasons
    assert "without data.runId" in reasons
    assert train.bus.receive_messages(COMPUTE_EVENTS_TOPIC, TRAIN_SUBSCRIPTION) == []
    assert train.events() == []


@pytest.mark.parametrize(
    "bad", undecodable_messages("cancel_stage"), ids=lambda message: message.message_id
)
def test_an_undecodable_cancel_between_valid_ones_is_dead_lettered_alone_and_at_once(
    train: Train, bad: OutgoingMessage
) -> None:
    commands = [train.send(), train.send()]
    assert train.worker.process_next() and train.worker.process_next()
    cancels = [
        encode(CancelStage(correlation_id=c.correlation_id, stage="train", attempt=1))
        for c in commands
    ]
    train.bus.send_messages(CONTROL_TOPIC, [cancels[0], bad, cancels[1]])

    assert train.worker.receive_control() == 3

    assert train.azure.cancelled == [
        f"retrainer-echo-{command.correlation_id}-1" for command in commands
    ]
    [dead] = train.bus.receive_messages(
        CONTROL_TOPIC, TRAIN_SUBSCRIPTION, max_message_count=5, max_wait_time=0.2, dead_letter=True
    )
    assert (dead.message_id, dead.dead_letter_reason) == (bad.message_id, "MalformedMessage")
    time.sleep(LOCK_S)
    assert train.worker.receive_control() == 0


@pytest.mark.parametrize("case", range(7))
def test_an_unreadable_compute_event_between_valid_ones_is_dead_lettered_alone_and_at_once(
    train: Train, case: int
) -> None:
    commands = [train.send(), train.send()]
    assert train.worker.process_next() and train.worker.process_next()
    train.events()
    job_ids = [f"retrainer-echo-{command.correlation_id}-1" for command in commands]
    valid = json.loads(run_status_changed(job_ids[0], "Failed").body)
    bad = unreadable_compute_events(valid)[case]
    train.bus.send_messages(
        COMPUTE_EVENTS_TOPIC,
        [
            run_status_changed(job_ids[0], "Failed"),
            OutgoingMessage(body=bad, message_id="bad"),
            run_status_changed(job_ids[1], "Failed"),
        ],
    )

    assert train.jobs.receive_compute_events() == 3

    failed = [e.correlation_id for e in train.events() if isinstance(e, StageFailed)]
    assert failed == [command.correlation_id for command in commands]
    [dead] = train.bus.receive_messages(
        COMPUTE_EVENTS_TOPIC,
        TRAIN_SUBSCRIPTION,
        max_message_count=5,
        max_wait_time=0.2,
        dead_letter=True,
    )
    assert (dead.message_id, dead.dead_letter_reason) == ("bad", "MalformedEvent")


def test_a_subprocess_job_is_cancelled_while_the_worker_waits(
    bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    local = LocalTrainingCompute(
        tmp_path / "jobs",
        timeout_s=120,
        kill_grace_s=1,
        recipe_modules=("tests.recipe_fixtures",),
        env={"RETRAINER_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"},
    )
    train = make_train(bus, blobs, tmp_path, compute_gpu="subprocess", local=local)
    command = train.send(params={"sleep_s": 60})
    worker = threading.Thread(target=train.worker.process_next)
    worker.start()
    deadline = time.monotonic() + 60
    while not local._jobs and time.monotonic() < deadline:
        time.sleep(0.05)

    train.bus.send_messages(
        CONTROL_TOPIC,
        [encode(CancelStage(correlation_id=command.correlation_id, stage="train", attempt=1))],
    )
    assert train.worker.receive_control() == 1
    worker.join(timeout=30)

    assert not worker.is_alive()
    failed = [e for e in train.events() if isinstance(e, StageFailed)]
    assert failed and not failed[0].retryable and "cancelled" in failed[0].error
    assert train.azure.submitted == []


def test_the_worker_submits_a_real_azure_ml_command_job_that_an_event_completes(
    bus: SqliteMessageBus,
    blobs: LocalBlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real AzureMLTrainingCompute (azure-ai-ml) with only its HTTP transport faked."""
    workspace = FakeWorkspace()
    workspace.add_environment("retrainer-train", "1")
    workspace.add_code("retrainer-src", "3")
    monkeypatch.chdir(tmp_path)  # outside a git work tree: no mlflow.source.git.* properties
    azure = AzureMLTrainingCompute(
        fake_ml_client(workspace),
        compute_name="gpu-cluster",
        environment="azureml:retrainer-train@latest",
        code_dir="azureml:retrainer-src:3",
    )
    settings = TrainSettings(state_dir=tmp_path / "state", compute_gpu="azureml")
    jobs = TrainingJobs(bus=bus, blob_store=blobs, remote=azure, poll_interval_s=3600)
    handler = make_handler(
        settings, registry=None, jobs=jobs, subprocess_compute=None, azureml_compute=azure
    )
    spec = StageSpec("train", ("split",), "model", handler, download_inputs=False)
    worker = Worker(spec, bus=bus, blob_store=blobs, recipe_lookup=lookup, lock_duration_s=LOCK_S)
    train = Train(worker, jobs, FakeAzureML(), bus, blobs)

    with refuse_network():
        command = train.send()
        worker.process_next()
        [put] = workspace.calls("PUT", "/jobs/")
        job = put.body["properties"]
        assert job["inputs"]["split"]["uri"] == (
            "azureml://datastores/retrainer_artifacts/paths/cache/split/abc/"
        )
        output_uri = job["outputs"]["model"]["uri"]
        assert job["tags"]["correlation_id"] == str(command.correlation_id)
        name = f"retrainer-echo-{command.correlation_id}-1"
        assert put.path.endswith(f"/jobs/{name}")

        prefix = "artifacts/" + output_uri.split("/paths/", 1)[1].rstrip("/")
        blobs.upload_blob(f"{prefix}/result.json", json.dumps(RESULT).encode())
        workspace.set_status(name, "Completed")
        bus.send_messages(COMPUTE_EVENTS_TOPIC, [run_status_changed(name, "Completed")])
        jobs.receive_compute_events()

    succeeded = [e for e in train.events() if isinstance(e, StageSucceeded)]
    assert succeeded[0].outputs == {"model": prefix}
    assert succeeded[0].details["compute_job_id"] == name
    assert workspace.unexpected == []


def _automl(params: object) -> AutoMLImageObjectDetection:
    return AutoMLImageObjectDetection(max_trials=8, max_concurrent_trials=4)


def test_the_worker_submits_an_automl_job_that_a_run_status_changed_event_completes(
    bus: SqliteMessageBus,
    blobs: LocalBlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recipe with an AutoML task on Azure ML: the real SDK submits an AutoML image
    object-detection job on the run's data-asset version and the split's validation table
    (only the HTTP transport is faked); its RunStatusChanged event finishes the stage with the
    best child run's MLflow model, read from a real MLflow store."""
    workspace = FakeWorkspace()
    monkeypatch.chdir(tmp_path)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    azure = AzureMLTrainingCompute(
        fake_ml_client(workspace),
        compute_name="gpu-cluster",
        environment="azureml:retrainer-train@latest",
        code_dir="azureml:retrainer-src:3",
        mlflow_tracking_uri=tracking_uri,
    )
    settings = TrainSettings(
        state_dir=tmp_path / "state", compute_gpu="azureml", data_assets="azureml"
    )
    jobs = TrainingJobs(bus=bus, blob_store=blobs, remote=azure, poll_interval_s=3600)
    handler = make_handler(
        settings, registry=None, jobs=jobs, subprocess_compute=None, azureml_compute=azure
    )
    spec = StageSpec("train", ("split",), "model", handler, download_inputs=False)
    detector = dataclasses.replace(gpu_echo, automl=_automl)
    worker = Worker(
        spec, bus=bus, blob_store=blobs, recipe_lookup=only(detector), lock_duration_s=LOCK_S
    )
    train = Train(worker, jobs, FakeAzureML(), bus, blobs)
    blobs.upload_blob(f"{SPLIT}/validation/MLTable", b"paths: []\n")

    with refuse_network():
        command = train.send(inputs={"split": SPLIT, "data_asset": "echo-training-data@2"})
        worker.process_next()
        _, progress = train.events()
        name = f"retrainer-echo-{command.correlation_id}-1"
        assert isinstance(progress, StageProgress)
        assert progress.details == {
            "compute_backend": "azureml",
            "compute_job_id": name,
            "compute_job_kind": "automl",
        }
        [put] = workspace.calls("PUT", "/jobs/")
        assert put.path == f"/jobs/{name}"
        job = put.body["properties"]
        assert job["jobType"] == "AutoML"
        assert job["tags"]["correlation_id"] == str(command.correlation_id)
        task = job["taskDetails"]
        assert task["taskType"] == "ImageObjectDetection"
        assert task["primaryMetric"] == "MeanAveragePrecision"
        assert task["trainingData"]["uri"].endswith("/data/echo-training-data/versions/2")
        assert task["validationData"] == {
            "jobInputType": "mltable",
            "uri": "azureml://datastores/retrainer_artifacts/paths/cache/split/abc/validation/",
        }
        assert task["limitSettings"] == {
            "maxConcurrentTrials": 4,
            "maxTrials": 8,
            "timeout": "PT3H",
        }

        # AutoML ran its trials, logged them to the workspace's MLflow and named the best.
        client = MlflowClient(tracking_uri)
        experiment = client.create_experiment(
            "retrainer-echo", artifact_location=(tmp_path / "mlartifacts").as_uri()
        )
        best = client.create_run(experiment, run_name=f"{name}_5").info.run_id
        client.log_metric(best, "mean_average_precision", 0.64)
        workspace.jobs[name]["properties"]["tags"]["automl_best_child_run_id"] = best
        workspace.set_status(name, "Completed")

        bus.send_messages(COMPUTE_EVENTS_TOPIC, [run_status_changed(f"{name}_5", "Completed")])
        bus.send_messages(COMPUTE_EVENTS_TOPIC, [run_status_changed(name, "Completed")])
        assert jobs.receive_compute_events() == 2

    [succeeded] = train.events()
    assert isinstance(succeeded, StageSucceeded)
    assert succeeded.metrics == {"mean_average_precision": 0.64}
    assert succeeded.details["mlflow_run_id"] == best
    assert succeeded.details["model_uri"] == f"runs:/{best}/outputs/mlflow-model"
    assert succeeded.details["compute_job_kind"] == "automl"
    [prefix] = succeeded.outputs.values()
    training = json.loads(blobs.download_blob(f"{prefix}/training.json").data)
    assert (training["mlflow_run_id"], training["model_uri"]) == (
        best,
        f"runs:/{best}/outputs/mlflow-model",
    )  # what the register stage registers
    assert jobs.pending() == []
    assert workspace.unexpected == []


class FakeAutoML(FakeAzureML):
    """The port as Azure ML answers an AutoML job: its best child from MLflow, which may be
    down for a while."""

    def __init__(self) -> None:
        super().__init__()
        self.mlflow_down = 0
        self.best_child: str | None = "child-7"

    def automl_result(self, handle: JobHandle) -> dict[str, Any]:
        if self.mlflow_down:
            self.mlflow_down -= 1
            raise ComputeUnavailableError("MLflow unreachable")
        if self.best_child is None:
            raise AutoMLResultError(f"AutoML job {handle.job_id} names no best child run")
        return {
            "mlflow_run_id": self.best_child,
            "model_uri": f"runs:/{self.best_child}/outputs/mlflow-model",
            "experiment_id": "3",
            "metrics": {"mean_average_precision": 0.5},
        }


def test_a_polled_automl_job_waits_out_an_mlflow_outage_and_a_missing_best_child_fails(
    bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    train = make_train(bus, blobs, tmp_path, compute_gpu="azureml")
    automl = FakeAutoML()
    train.jobs = TrainingJobs(bus=bus, blob_store=blobs, remote=automl, poll_interval_s=3600)
    settings = TrainSettings(state_dir=tmp_path / "state", compute_gpu="azureml")
    handler = make_handler(
        settings, registry=None, jobs=train.jobs, subprocess_compute=None, azureml_compute=automl
    )
    detector = dataclasses.replace(gpu_echo, automl=_automl)
    train.worker = Worker(
        StageSpec("train", ("split",), "model", handler, download_inputs=False),
        bus=bus,
        blob_store=blobs,
        recipe_lookup=only(detector),
        lock_duration_s=LOCK_S,
    )
    first = train.send()
    second = train.send(params={"scale": 3.0})
    train.worker.process_next()
    train.worker.process_next()
    train.events()
    job = automl.submitted[0]
    assert job.automl is not None and job.training_data.endswith("/cache/split/abc/train/")
    assert job.validation_data is None  # the split wrote no validation table
    ids = [f"retrainer-echo-{c.correlation_id}-1" for c in (first, second)]
    for job_id in ids:
        automl.status[job_id] = JobStatus("succeeded")

    automl.mlflow_down = 2
    assert train.jobs.poll() == 0  # both ended, neither finished: the results wait
    assert train.events() == []
    assert len(train.jobs.pending()) == 2
    assert train.jobs.poll() == 2
    [succeeded, also] = train.events()
    assert isinstance(succeeded, StageSucceeded) and isinstance(also, StageSucceeded)
    assert succeeded.details["model_uri"] == "runs:/child-7/outputs/mlflow-model"
    assert succeeded.metrics == {"mean_average_precision": 0.5}
    assert train.jobs.pending() == []

    # A finished AutoML job that names no best child fails its stage for good.
    automl.best_child = None
    third = train.send(params={"scale": 4.0})
    train.worker.process_next()
    train.events()
    automl.status[f"retrainer-echo-{third.correlation_id}-1"] = JobStatus("succeeded")
    assert train.jobs.poll() == 1
    [failed] = train.events()
    assert isinstance(failed, StageFailed)
    assert failed.retryable is False
    assert "names no best child run" in failed.error


def test_the_follower_loop_polls_until_stopped(
    bus: SqliteMessageBus, blobs: LocalBlobStore, tmp_path: Path
) -> None:
    train = make_train(bus, blobs, tmp_path, compute_gpu="azureml", poll_interval_s=0.05)
    command = train.send()
    train.worker.process_next()
    train.events()
    job_id = f"retrainer-echo-{command.correlation_id}-1"
    stopping = threading.Event()
    loop = threading.Thread(target=train.jobs.run, args=(stopping,))
    loop.start()
    try:
        cancel = CancelStage(correlation_id=command.correlation_id, stage="train", attempt=1)
        train.bus.send_messages(CONTROL_TOPIC, [encode(cancel)])
        assert train.worker.receive_control() == 1
        deadline = time.monotonic() + 20
        while train.jobs.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stopping.set()
        loop.join(timeout=10)

    assert not loop.is_alive()
    assert train.azure.cancelled == [job_id]
    # Polling saw the cancelled job and finished it without any event.
    [failed] = train.events()
    assert isinstance(failed, StageFailed) and "cancelled" in failed.error


def test_events_and_cancels_arrive_over_service_bus(blobs: LocalBlobStore) -> None:
    """The follower on the Service Bus adapter (real azure-servicebus SDK, test AMQP broker):
    RunStatusChanged delivered to compute-events as Event Grid does (one event per message,
    JSON body, no application properties), CancelStage on run-control, events out."""
    azure = FakeAzureML()
    with ServiceBusTestBroker(build_topology(lock_duration_s=LOCK_S)) as broker:
        bus = ServiceBusMessageBus.from_connection_string(
            broker.connection_string, topology=build_topology(lock_duration_s=LOCK_S)
        )
        try:
            received = _follow_over(bus, broker.connection_string, blobs, azure)
        finally:
            bus.close()
    assert broker.errors == []

    finished, cancelled, handled, messages = received
    assert handled == [1, 1]
    assert azure.cancelled == [f"retrainer-echo-{cancelled.correlation_id}-1"]
    [succeeded] = messages
    assert isinstance(succeeded, StageSucceeded)
    assert succeeded.correlation_id == finished.correlation_id
    assert succeeded.details["compute_job_id"] == f"retrainer-echo-{finished.correlation_id}-1"


def _follow_over(
    bus: ServiceBusMessageBus, connection_string: str, blobs: LocalBlobStore, azure: FakeAzureML
) -> tuple[RunStage, RunStage, list[int], list[Message]]:
    """Two recorded jobs: one completes by event, one is cancelled; returns what came out."""
    jobs = TrainingJobs(bus=bus, blob_store=blobs, remote=azure, poll_interval_s=3600)
    finished, cancelled = (
        RunStage(correlation_id=uuid.uuid4(), stage="train", attempt=1, recipe="echo", inputs={})
        for _ in range(2)
    )
    for command in (finished, cancelled):
        job = TrainingJob(str(command.correlation_id), "echo", {}, "in", "out", "e")
        prefix = f"artifacts/cache/train/{command.correlation_id}"
        jobs.submit(command, prefix, functools.partial(azure.begin_training, job))
    blobs.upload_blob(
        f"artifacts/cache/train/{finished.correlation_id}/result.json", json.dumps(RESULT).encode()
    )
    event = run_status_changed(f"retrainer-echo-{finished.correlation_id}-1", "Completed").body
    with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_topic_sender(COMPUTE_EVENTS_TOPIC) as sender,
    ):
        sender.send_messages(ServiceBusMessage(event, content_type="application/json"))
    stop = CancelStage(correlation_id=cancelled.correlation_id, stage="train", attempt=1)
    bus.send_messages(CONTROL_TOPIC, [encode(stop)])

    deadline = time.monotonic() + 30
    handled = [0, 0]
    while handled != [1, 1] and time.monotonic() < deadline:
        handled[0] += jobs.receive_compute_events()
        handled[1] += receive_cancels(bus, "train", jobs.cancel, max_wait_s=0.5)
    received = bus.receive_messages(
        EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=10, max_wait_time=5
    )
    for message in received:
        bus.complete_message(message)
    return (
        finished,
        cancelled,
        handled,
        [decode(m.body, m.application_properties) for m in received],
    )


def test_cancelling_a_given_up_attempt_spares_its_retry(train: Train) -> None:
    """A missed deadline sends CancelStage(attempt 1) and RunStage(attempt 2): however they
    arrive, only attempt 1's job is cancelled."""
    first = train.send()
    train.worker.process_next()
    retry = train.send(correlation_id=first.correlation_id, attempt=2)
    train.worker.process_next()
    train.events()
    assert len(train.jobs.pending()) == 2

    cancel = CancelStage(correlation_id=first.correlation_id, stage="train", attempt=1)
    train.bus.send_messages(CONTROL_TOPIC, [encode(cancel)])
    train.worker.receive_control()

    assert train.azure.cancelled == [f"retrainer-echo-{first.correlation_id}-1"]
    assert retry.attempt == 2
