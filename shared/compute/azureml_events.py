"""Azure ML's job statuses and its Event Grid ``RunStatusChanged`` event, without the SDK.

The train service's job follower reads these events whatever its configuration, so this module
must not import ``azure-ai-ml``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shared.compute.port import JobState, JobStatus, MalformedComputeEventError

RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"
# Azure ML's rule for job names; the follower looks a job up by its name in the blob store.
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,254}")

# Azure ML job/run statuses (azure.ai.ml.entities.Job.status, RunStatusChanged runStatus).
STATUS_MAP: dict[str, JobState] = {
    "NotStarted": "queued",
    "Queued": "queued",
    "Preparing": "queued",
    "Provisioning": "queued",
    "Starting": "queued",
    "Running": "running",
    "Finalizing": "running",
    "Completed": "succeeded",
    "Failed": "failed",
    "NotResponding": "failed",
    "Canceled": "cancelled",
    "CancelRequested": "cancelled",
}


def map_status(azure_status: str | None, message: str = "") -> JobStatus:
    state = STATUS_MAP.get(azure_status or "")
    if state is None:
        # Paused, Unknown, a status added later: not final, keep following it.
        return JobStatus("running", f"Azure ML status {azure_status!r}")
    return JobStatus(state, message or f"Azure ML status {azure_status}")


def _field(obj: Mapping[str, Any], key: str, what: str) -> Any:
    value = obj.get(key)
    if value in (None, ""):
        raise MalformedComputeEventError(f"{RUN_STATUS_CHANGED} event without {what}")
    return value


def parse_run_status_changed(event: Mapping[str, Any]) -> tuple[str, JobStatus] | None:
    """(job name, status) from a RunStatusChanged event; None for any other event type.

    Accepts the Event Grid schema (``eventType``) and CloudEvents 1.0 (``type``); ``data``
    carries ``runId`` (the command job's name), ``runStatus`` and ``experimentName``.
    """
    if not isinstance(event, Mapping):
        raise MalformedComputeEventError(f"event is not an object: {type(event).__name__}")
    event_type = event.get("eventType", event.get("type"))
    if event_type != RUN_STATUS_CHANGED:
        return None
    data = _field(event, "data", "data")
    if not isinstance(data, Mapping):
        raise MalformedComputeEventError(f"{RUN_STATUS_CHANGED} event data is not an object")
    run_id = _field(data, "runId", "data.runId")
    run_status = _field(data, "runStatus", "data.runStatus")
    if not isinstance(run_id, str) or not isinstance(run_status, str):
        raise MalformedComputeEventError(f"{RUN_STATUS_CHANGED} runId/runStatus must be strings")
    if not _JOB_NAME.fullmatch(run_id):
        raise MalformedComputeEventError(
            f"{RUN_STATUS_CHANGED} runId {run_id[:100]!r} is not an Azure ML job name"
        )
    experiment = data.get("experimentName") or ""
    return run_id, map_status(run_status, f"Azure ML status {run_status} ({experiment})".strip())
