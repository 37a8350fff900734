"""Training jobs that run outside the worker: submitting, following, cancelling, finishing.

A stage handed to remote compute (Azure ML) is *deferred*: the worker submits the job, records
it in the blob store and completes its message, so no worker waits hours on a GPU job. The
train service's follower loop (``TrainingJobs.run``) then completes the stage:

* ``compute-events``/``train``: Azure ML's Event Grid ``RunStatusChanged`` events (one per
  message); a terminal status finishes the job at once;
* polling: every ``poll_interval_s`` each recorded job's status is read (events can be lost or
  late, and a follower that was down missed them).

``cancel`` stops a run's recorded jobs; the train worker calls it for every ``CancelStage`` it
receives (``StageSpec.on_cancel``). A local training subprocess is the worker's own business:
the stage handler stops it when the attempt's ``RecipeContext`` is cancelled.

Finishing a succeeded job writes ``training.json`` and the stage manifest under the job's output
prefix (the train stage's cache location) and publishes ``StageSucceeded``; a failed or
cancelled job publishes ``StageFailed``. Events are de-duplicated by message id, so finishing a
job twice (a crash between publishing and deleting its record) sends nothing new.

Records: ``artifacts/training-jobs/runs/<correlation_id>/attempt-<n>.json`` (what the follower
needs) and ``artifacts/training-jobs/jobs/<job id>`` (the record's name, to find it from an
event). They survive restarts of the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from shared.blobs.port import BlobStore
from shared.bus.consuming import MALFORMED_EVENT, dead_letter, handle_each
from shared.bus.port import MessageBus, ReceivedMessage
from shared.compute.azureml_events import parse_run_status_changed
from shared.compute.port import (
    ERROR_FILE,
    RESULT_FILE,
    ComputeUnavailableError,
    JobHandle,
    JobNotFoundError,
    JobStatus,
    MalformedComputeEventError,
    TrainingCompute,
)
from shared.errors import BlobNotFoundError, PermanentError, RetryableError
from shared.messages import CancelStage, RunStage, StageFailed, StageSucceeded, encode
from shared.stage_logs import failure_log_blob
from shared.stage_logs import tail as log_tail
from shared.telemetry import in_current_trace, stage_span
from shared.topology import COMPUTE_EVENTS_TOPIC, EVENTS_TOPIC, TRAIN_SUBSCRIPTION
from shared.worker import StageResult, failed_event, succeeded_event, write_manifest

log = logging.getLogger(__name__)

RECORDS_PREFIX = "artifacts/training-jobs"
TRAINING_RECORD = "training.json"
MODEL_OUTPUT = "model"
RECEIVE_BATCH = 20
# A command job runs the train entry point (result.json); an AutoML job's best child is the result.
JobKind = Literal["command", "automl"]


class TrainingJobFailedError(RetryableError):
    """A training job failed in a way a new attempt may fix (crash, timeout, lost job)."""


class TrainingJobRejectedError(PermanentError):
    """A training job failed on its input (bad params, invalid data) or was cancelled."""


def training_record(result: Mapping[str, Any]) -> dict[str, Any]:
    """``training.json`` (what the register stage reads) from the entry point's result.json."""
    try:
        return {
            "mlflow_run_id": result["mlflow_run_id"],
            "model_uri": result["model_uri"],
            "experiment_id": result.get("experiment_id", ""),
            "metrics": result["metrics"],
        }
    except KeyError as exc:
        raise TrainingJobRejectedError(
            f"the training job's {RESULT_FILE} lacks {exc.args[0]!r}: was it run with --mlflow?"
        ) from None


def failure_of(status: JobStatus, error: Mapping[str, Any] | None) -> Exception:
    """The exception a finished, unsuccessful job stands for (its error.json when it wrote one)."""
    if status.state == "cancelled":
        return TrainingJobRejectedError(f"training job cancelled: {status.message}".rstrip(": "))
    if error is not None:
        text = f"{error.get('error_type', 'Error')}: {error.get('error', '')}"
        if error.get("retryable", True):
            return TrainingJobFailedError(text)
        return TrainingJobRejectedError(text)
    return TrainingJobFailedError(f"training job failed: {status.message}")


def _job_details(record: Mapping[str, Any]) -> dict[str, str]:
    """Where the work went, for the run's record (an AutoML job says so)."""
    details = {"compute_backend": record["backend"], "compute_job_id": record["job_id"]}
    if record.get("kind", "command") != "command":
        details["compute_job_kind"] = record["kind"]
    return details


def _pointer_name(job_id: str) -> str:
    """The blob naming a job's record, to find it from the job's id (an event)."""
    return f"{RECORDS_PREFIX}/jobs/{job_id}"


class TrainingJobs:
    def __init__(
        self,
        *,
        bus: MessageBus,
        blob_store: BlobStore,
        remote: TrainingCompute | None,
        poll_interval_s: float,
        receive_wait_s: float = 0.5,
    ) -> None:
        self._bus = bus
        self._blobs = blob_store
        self._remote = remote
        self._poll_interval_s = poll_interval_s
        self._receive_wait_s = receive_wait_s

    # -- deferred remote jobs -------------------------------------------------------------

    def record_name(self, command: RunStage) -> str:
        return f"{RECORDS_PREFIX}/runs/{command.correlation_id}/attempt-{command.attempt}.json"

    def submit(
        self,
        command: RunStage,
        output_prefix: str,
        begin: Callable[[], JobHandle],
        *,
        kind: JobKind = "command",
    ) -> StageResult:
        """Start a remote job via ``begin()`` (returns a ``JobHandle``) unless this attempt has
        one already (a redelivered command), record it, and defer the stage. ``kind``: a
        ``command`` job writes result.json under the output prefix; an ``automl`` job's result
        is its best child run (``AutoMLCompute.automl_result``)."""
        name = self.record_name(command)
        try:
            record = json.loads(self._blobs.download_blob(name).data)
        except BlobNotFoundError:
            handle = begin()
            record = {
                "backend": handle.backend,
                "job_id": handle.job_id,
                "kind": kind,
                "command": command.model_dump(mode="json"),
                "output_prefix": output_prefix,
                "submitted_at": datetime.now(UTC).isoformat(),
            }
            self._blobs.upload_blob(name, json.dumps(record, indent=2).encode())
            self._blobs.upload_blob(_pointer_name(handle.job_id), name.encode())
            log.info("run %s: training job %s submitted", command.correlation_id, handle.job_id)
        return StageResult(
            deferred=True,
            details=_job_details(record),
        )

    def pending(self) -> list[dict[str, Any]]:
        records = []
        for blob in self._blobs.list_blobs(f"{RECORDS_PREFIX}/runs/"):
            try:
                records.append(json.loads(self._blobs.download_blob(blob.name).data))
            except BlobNotFoundError:
                continue  # finished meanwhile
        return records

    def poll(self) -> int:
        """Read every recorded job's status; finish those that ended. Returns how many."""
        finished = 0
        for record in self.pending():
            handle = JobHandle(record["job_id"], record["backend"])
            try:
                status = self._require_remote().get_job_status(handle)
            except ComputeUnavailableError as exc:
                log.warning("polling %s: %s", handle.job_id, exc)
                continue
            except JobNotFoundError:
                status = JobStatus("failed", f"training job {handle.job_id} not found")
            if status.is_terminal and self.finish(record, status):
                finished += 1
        return finished

    def on_status(self, job_id: str, status: JobStatus) -> bool:
        """A job's status from an event; finishes it when terminal. False: not one of ours."""
        try:
            name = self._blobs.download_blob(_pointer_name(job_id)).data.decode()
            record = json.loads(self._blobs.download_blob(name).data)
        except BlobNotFoundError:
            return False
        if status.is_terminal:
            self.finish(record, status)
        return True

    def finish(self, record: Mapping[str, Any], status: JobStatus) -> bool:
        """Publish the outcome of a job that ended and forget it; False when its result cannot
        be read yet (an AutoML job's best child while MLflow is down): it stays recorded."""
        command = RunStage.model_validate(record["command"])
        prefix = record["output_prefix"]
        result: Mapping[str, Any] | None = None
        if status.state == "succeeded" and record.get("kind") == "automl":
            try:
                result = self._automl_result(record)
            except ComputeUnavailableError as exc:
                # Left recorded: the next poll (or event) tries again.
                log.warning("run %s: AutoML result not read yet: %s", command.correlation_id, exc)
                return False
            except PermanentError as exc:
                status = JobStatus("failed", str(exc))
                result = {"error": str(exc), "error_type": type(exc).__name__, "retryable": False}
        # A stage span over the job's whole life: the worker's own span covered the submit.
        with stage_span(
            command,
            worker=f"{record['backend']}:{record['job_id']}",
            started_at=datetime.fromisoformat(record["submitted_at"]),
        ) as span:
            event: StageSucceeded | StageFailed
            if status.state == "succeeded":
                event = self._succeeded(command, prefix, record, result)
            elif result is not None:
                event = failed_event(command, failure_of(status, result))
            else:
                written = self._read_json(prefix, ERROR_FILE)
                event = failed_event(command, failure_of(status, written))
                self._keep_failure_log(command, written, status)
            span.finish(event)
            self._bus.send_messages(EVENTS_TOPIC, [encode(in_current_trace(event))])
        # Another replica may have finished the same job (its event and our poll): no matter.
        for name in (self.record_name(command), _pointer_name(record["job_id"])):
            with contextlib.suppress(BlobNotFoundError):
                self._blobs.delete_blob(name)
        log.info("run %s: training job %s %s", command.correlation_id, record["job_id"], status)
        return True

    def _keep_failure_log(
        self, command: RunStage, written: Mapping[str, Any] | None, status: JobStatus
    ) -> None:
        """The job's traceback (its error.json's ``log``), else what its compute said (a
        subprocess's stderr tail), as the attempt's log for the dashboard; best effort."""
        text = written.get("log") if written is not None else None
        if not isinstance(text, str) or not text:
            text = status.message
        if not text:
            return
        try:
            self._blobs.upload_blob(
                failure_log_blob(command.correlation_id, command.stage, command.attempt),
                log_tail(text)[0].encode("utf-8"),
            )
        except Exception as exc:
            log.warning("run %s: could not keep the job's log: %s", command.correlation_id, exc)

    def _automl_result(self, record: Mapping[str, Any]) -> Mapping[str, Any]:
        remote = self._require_remote()
        reader = getattr(remote, "automl_result", None)
        if reader is None:
            raise PermanentError(f"{record['backend']} compute cannot read AutoML results")
        result: Mapping[str, Any] = reader(JobHandle(record["job_id"], record["backend"]))
        return result

    def _succeeded(
        self,
        command: RunStage,
        prefix: str,
        record: Mapping[str, Any],
        result: Mapping[str, Any] | None = None,
    ) -> StageSucceeded | StageFailed:
        if result is None:
            result = self._read_json(prefix, RESULT_FILE)
        if result is None:
            return failed_event(
                command, TrainingJobFailedError(f"the training job wrote no {prefix}/{RESULT_FILE}")
            )
        try:
            training = training_record(result)
        except TrainingJobRejectedError as exc:
            return failed_event(command, exc)
        self._blobs.upload_blob(
            f"{prefix}/{TRAINING_RECORD}", json.dumps(training, indent=2).encode()
        )
        details = {
            "mlflow_run_id": training["mlflow_run_id"],
            "model_uri": training["model_uri"],
            **_job_details(record),
        }
        manifest = write_manifest(self._blobs, prefix, metrics=training["metrics"], details=details)
        submitted = datetime.fromisoformat(record["submitted_at"])
        return succeeded_event(command, MODEL_OUTPUT, prefix, manifest).model_copy(
            update={"duration_s": (datetime.now(UTC) - submitted).total_seconds()}
        )

    def _read_json(self, prefix: str, name: str) -> dict[str, Any] | None:
        try:
            content: dict[str, Any] = json.loads(self._blobs.download_blob(f"{prefix}/{name}").data)
        except BlobNotFoundError:
            return None
        return content

    def _require_remote(self) -> TrainingCompute:
        if self._remote is None:
            raise PermanentError("a training job is recorded but no remote compute is configured")
        return self._remote

    # -- cancelling ---------------------------------------------------------------------------

    def cancel(self, request: CancelStage) -> list[str]:
        """Cancel the run's recorded jobs at or before ``request.attempt``; returns their ids."""
        cancelled = []
        prefix = f"{RECORDS_PREFIX}/runs/{request.correlation_id}/"
        for blob in self._blobs.list_blobs(prefix):
            try:
                record = json.loads(self._blobs.download_blob(blob.name).data)
            except BlobNotFoundError:
                continue
            if record["command"]["attempt"] > request.attempt:
                continue  # the retry that replaced the cancelled attempt
            handle = JobHandle(record["job_id"], record["backend"])
            # A job gone already is finished by the next poll.
            with contextlib.suppress(JobNotFoundError):
                self._require_remote().cancel_job(handle)
            cancelled.append(handle.job_id)
        log.info("run %s: cancelled training jobs %s", request.correlation_id, cancelled)
        return cancelled

    # -- the follower loop --------------------------------------------------------------------

    def run(self, stopping: threading.Event) -> None:
        """Follow remote jobs until ``stopping`` is set: compute events, polling."""
        next_poll = 0.0
        while not stopping.is_set():
            try:
                self.receive_compute_events()
                if time.monotonic() >= next_poll:
                    self.poll()
                    next_poll = time.monotonic() + self._poll_interval_s
            except Exception:
                log.exception("training job follower error")
                stopping.wait(1.0)

    def receive_compute_events(self) -> int:
        messages = self._bus.receive_messages(
            COMPUTE_EVENTS_TOPIC,
            TRAIN_SUBSCRIPTION,
            max_message_count=RECEIVE_BATCH,
            max_wait_time=self._receive_wait_s,
        )
        return handle_each(
            self._bus, messages, self._on_compute_event, consumer="train compute-events"
        )

    def _on_compute_event(self, message: ReceivedMessage) -> None:
        try:
            try:
                event = json.loads(message.body)
            except (ValueError, RecursionError) as exc:  # also too deep, or a huge integer
                raise MalformedComputeEventError(f"compute event is not JSON: {exc}") from None
            parsed = parse_run_status_changed(event)
        except MalformedComputeEventError as exc:
            dead_letter(self._bus, message, reason=MALFORMED_EVENT, description=str(exc))
            return
        if parsed is not None:
            job_id, status = parsed
            if not self.on_status(job_id, status):
                log.debug("RunStatusChanged for a job that is not ours: %s", job_id)
        self._bus.complete_message(message)
