"""Application Insights telemetry from the whole process stack, captured locally.

The coordinator and the five workers run as processes (cli/stack.py) with an
Application Insights connection string whose ingestion endpoint is a local capture server
(tests/appinsights_capture.py). One state-identifier run later, and once the stack has stopped
gracefully (every service flushes on SIGTERM), the envelopes must show one trace per run:
``operation_Id`` equal to the run's correlation id in all six cloud roles.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from cli.main import prepare_state, stack_env, upload_sample_data, watch_run
from cli.stack import Stack, free_port
from shared.messages import STAGES
from shared.settings import CommonSettings
from shared.telemetry import (
    ATTR_ATTEMPT,
    ATTR_MODEL_NAME,
    ATTR_OUTCOME,
    ATTR_PRIMARY_METRIC,
    ATTR_PRIMARY_METRIC_VALUE,
    ATTR_RECIPE,
    ATTR_STAGE,
    ATTR_TRIGGER,
    EVENT_MODEL_PROMOTED,
    EVENT_MODEL_REGISTERED,
    EVENT_RUN_STARTED,
    EVENT_RUN_SUCCEEDED,
    METRIC_QUEUE_WAIT,
    METRIC_STAGE_DURATION,
    SPAN_COORDINATOR,
    SPAN_STAGE,
    command_traceparent,
    parse_traceparent,
)
from tests.appinsights_capture import (
    Capture,
    base_data,
    cloud_role,
    operation_id,
    properties,
    running_capture,
    tag,
)

pytestmark = pytest.mark.slow

SAMPLE = "datasets/state-identifier/sample"
ROLES = {"coordinator", *STAGES}


def telemetry_env(capture: Capture) -> dict[str, str]:
    return {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": capture.connection_string,
        # Keep every span (the distro's default rate-limits), reach nothing outside this
        # machine, keep nothing on disk for a later run, and export soon.
        "OTEL_TRACES_SAMPLER": "always_on",
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true",
        "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel",
        "RETRAINER_TELEMETRY_OFFLINE_STORAGE": "false",
        "RETRAINER_TELEMETRY_LIVE_METRICS": "false",
        "RETRAINER_TELEMETRY_PERFORMANCE_COUNTERS": "false",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }


def test_one_run_is_one_operation_across_all_six_services(tmp_path: Path) -> None:
    settings = CommonSettings(state_dir=tmp_path / "state")
    upload_sample_data(settings, "state_identifier", SAMPLE, seed=3)
    prepare_state(settings)
    port = free_port()
    with running_capture() as capture:
        stack = Stack(
            {**stack_env(settings, port), **telemetry_env(capture)},
            log_dir=settings.state_dir / "logs",
        )
        stack.start()
        try:
            url = f"http://127.0.0.1:{port}"
            stack.wait_ready(url)
            with httpx.Client(base_url=url, timeout=10.0) as client:
                response = client.post(
                    "/runs", json={"recipe": "state_identifier", "data": SAMPLE, "params": {}}
                )
                assert response.status_code == 202, response.text
                run_id = response.json()["id"]
                final = watch_run(client, run_id, out=lambda _: None, poll_s=0.2, timeout_s=240)
        finally:
            stopping = time.monotonic()
            stack.stop()  # SIGTERM: each service flushes its telemetry before exiting
            stopped_s = time.monotonic() - stopping
        envelopes = capture.envelopes
    assert final["status"] == "succeeded", final

    operation = uuid.UUID(run_id).hex
    ours = [e for e in envelopes if operation_id(e) == operation]
    assert {cloud_role(e) for e in ours} == ROLES, Counter(cloud_role(e) for e in ours)

    stage_requests = [e for e in capture.requests(SPAN_STAGE) if operation_id(e) == operation]
    by_stage = {properties(e)[ATTR_STAGE]: e for e in stage_requests}
    assert len(stage_requests) == len(STAGES) and set(by_stage) == set(STAGES)
    for stage, request in by_stage.items():
        assert cloud_role(request) == stage
        props = properties(request)
        assert props[ATTR_RECIPE] == "state_identifier"
        assert props[ATTR_ATTEMPT] == "1"
        assert props[ATTR_OUTCOME] == "succeeded"
    coordinator_requests = [
        e for e in capture.requests(SPAN_COORDINATOR) if operation_id(e) == operation
    ]
    # The start and, per stage, its StageStarted and StageSucceeded.
    assert len(coordinator_requests) >= 1 + 2 * len(STAGES)
    assert {cloud_role(e) for e in coordinator_requests} == {"coordinator"}
    # The hierarchy crosses the bus: a stage span is the child of its command's traceparent,
    # and the coordinator's spans of that stage's events are children of the stage span.
    for stage, request in by_stage.items():
        command = parse_traceparent(command_traceparent(uuid.UUID(run_id), stage, 1))
        assert command is not None
        assert tag(request, "ai.operation.parentId") == f"{command.span_id:016x}"
        children = [
            e
            for e in coordinator_requests
            if tag(e, "ai.operation.parentId") == base_data(request)["id"]
        ]
        assert len(children) == 2, stage  # StageStarted, StageSucceeded

    def event(name: str) -> dict[str, str]:
        [found] = [e for e in capture.events(name) if operation_id(e) == operation]
        assert cloud_role(found) == "coordinator"
        return properties(found)

    assert event(EVENT_RUN_STARTED)[ATTR_TRIGGER] == "api"
    event(EVENT_RUN_SUCCEEDED)
    for name in (EVENT_MODEL_REGISTERED, EVENT_MODEL_PROMOTED):
        model = event(name)
        assert model[ATTR_MODEL_NAME] == "state_identifier"
        assert model[ATTR_PRIMARY_METRIC] == "silhouette"
        assert float(model[ATTR_PRIMARY_METRIC_VALUE]) == pytest.approx(
            final["metrics"]["silhouette"]
        )

    # The distro's performance counters (``\Processor(_Total)\% Processor Time``...) are off.
    metric_names = {
        m["name"] for e in capture.of_type("MetricData") for m in base_data(e)["metrics"]
    }
    assert not [name for name in metric_names if name.startswith("\\")], metric_names

    durations = capture.metrics(METRIC_STAGE_DURATION)
    assert {properties(e)[ATTR_STAGE] for e in durations} == set(STAGES)
    assert {cloud_role(e) for e in capture.metrics(METRIC_QUEUE_WAIT)} == set(STAGES)
    print(
        f"\n{len(envelopes)} envelopes in {capture.posts} posts, {len(ours)} of the run's "
        f"operation; stack stopped in {stopped_s:.1f} s"
    )
