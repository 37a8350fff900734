"""Blob params, reports and history records through the real worker runtime.

A recipe names params whose values are blob paths (``Recipe.blob_params``); the worker fetches
them for the stages that read them, keys the cache on their etags, and keeps the reports and
history record a stage returns. The embedded bus and a local blob store, no fakes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from services.aggregation import build_spec as aggregation_spec
from shared.blobs.local import LocalBlobStore
from shared.bus.sqlite import SqliteMessageBus
from shared.history import HISTORY_RECORD_FILE, append_run, history_blob
from shared.messages import Message, RunStage, StageFailed, StageSucceeded, decode, encode
from shared.stage_logs import failure_log_blob
from shared.topology import COORDINATOR_SUBSCRIPTION, EVENTS_TOPIC, build_topology, command_topic
from shared.worker import Worker
from tests.recipe_fixtures import echo_recipe, only

LOCK_S = 2.0
REFERENCE = "baselines/echo/reference.txt"


class ReferenceParams(RecipeParams):
    reference: str | None = None


def _aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    assert isinstance(params, ReferenceParams) and ctx is not None
    reference = ctx.blob_input("reference").read_text() if params.reference else "none"
    (out_dir / "seen.txt").write_text(reference)
    (out_dir / "report.md").write_text(f"# reference\n\n{reference}\n")
    return DatasetSummary(
        rows=1,
        files=["seen.txt"],
        reports={"reference_report": "report.md"},
        history_record={"reference": reference, "rows": 1},
    )


reference_recipe = dataclasses.replace(
    echo_recipe,
    name="reference",
    params_model=ReferenceParams,
    aggregate=_aggregate,
    stage_params={"aggregation": ["reference"], "split": [], "train": []},
    blob_params=["reference"],
)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[SqliteMessageBus]:
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology(lock_duration_s=LOCK_S))
    yield bus
    bus.close()


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    store = LocalBlobStore(tmp_path / "blobs")
    store.upload_blob("datasets/echo/raw/a.txt", b"1\n")
    store.upload_blob(REFERENCE, b"version 1")
    return store


def run_aggregation(
    bus: SqliteMessageBus, blobs: LocalBlobStore, params: Mapping[str, object]
) -> Message:
    worker = Worker(
        aggregation_spec(),
        bus=bus,
        blob_store=blobs,
        recipe_lookup=only(reference_recipe),
        lock_duration_s=LOCK_S,
        receive_wait_s=0.2,
    )
    command = RunStage(
        correlation_id=uuid.uuid4(),
        stage="aggregation",
        attempt=1,
        recipe="reference",
        params=dict(params),
        inputs={"data": "datasets/echo/raw"},
    )
    bus.send_messages(command_topic("aggregation"), [encode(command)])
    assert worker.process_next()
    received = bus.receive_messages(
        EVENTS_TOPIC, COORDINATOR_SUBSCRIPTION, max_message_count=10, max_wait_time=0.2
    )
    for message in received:
        bus.complete_message(message)
    return decode(received[-1].body, received[-1].application_properties)


def test_a_blob_param_is_fetched_for_the_stage_and_its_etag_keys_the_cache(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    params = {"reference": REFERENCE}
    first = run_aggregation(bus, blobs, params)
    again = run_aggregation(bus, blobs, params)
    blobs.upload_blob(REFERENCE, b"version 2")
    edited = run_aggregation(bus, blobs, params)
    without = run_aggregation(bus, blobs, {})

    assert isinstance(first, StageSucceeded) and isinstance(again, StageSucceeded)
    assert isinstance(edited, StageSucceeded) and isinstance(without, StageSucceeded)
    assert (first.cached, again.cached, edited.cached) == (False, True, False)
    assert first.outputs == again.outputs != edited.outputs != without.outputs
    seen = [blobs.download_blob(e.outputs["dataset"] + "/seen.txt").data for e in (first, edited)]
    assert seen == [b"version 1", b"version 2"]
    assert blobs.download_blob(without.outputs["dataset"] + "/seen.txt").data == b"none"


def test_a_missing_blob_param_fails_the_stage_permanently_naming_the_param(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    failed = run_aggregation(bus, blobs, {"reference": "baselines/echo/missing.txt"})

    assert isinstance(failed, StageFailed) and not failed.retryable
    assert "param 'reference'" in failed.error and "baselines/echo/missing.txt" in failed.error
    # Nothing but the attempt's log (its traceback, for the dashboard).
    assert [b.name for b in blobs.list_blobs("artifacts/")] == [
        failure_log_blob(failed.correlation_id, "aggregation", failed.attempt)
    ]


def test_reports_and_the_history_record_travel_with_the_stage_output(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    succeeded = run_aggregation(bus, blobs, {"reference": REFERENCE})

    assert isinstance(succeeded, StageSucceeded)
    assert succeeded.details["reports"] == {"reference_report": "report.md"}
    prefix = succeeded.outputs["dataset"]
    assert blobs.download_blob(f"{prefix}/report.md").data.startswith(b"# reference")
    record = json.loads(blobs.download_blob(f"{prefix}/{HISTORY_RECORD_FILE}").data)
    assert record == {"reference": "version 1", "rows": 1}


def test_a_run_appends_one_parquet_row_to_the_history(
    bus: SqliteMessageBus, blobs: LocalBlobStore
) -> None:
    succeeded = run_aggregation(bus, blobs, {"reference": REFERENCE})
    assert isinstance(succeeded, StageSucceeded)
    dataset = succeeded.outputs["dataset"]
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    names = [
        append_run(
            blobs,
            recipe="reference",
            run_id=run_id,
            data="datasets/echo/raw",
            dataset_version=dataset,
            outcome={"model_version": "3", "promoted": run_id == "run-b"},
            now=when,
        )
        for run_id in ("run-a", "run-b", "run-a")  # a retried tag stage rewrites its own row
    ]
    no_record = append_run(
        blobs,
        recipe="reference",
        run_id="run-c",
        data="datasets/echo/raw",
        dataset_version="artifacts/cache/aggregation/none",
        outcome={},
    )

    assert names == [history_blob("reference", r) for r in ("run-a", "run-b", "run-a")]
    assert no_record is None
    files = sorted(b.name for b in blobs.list_blobs("artifacts/history/reference/"))
    assert files == [
        "artifacts/history/reference/run-a.parquet",
        "artifacts/history/reference/run-b.parquet",
    ]
    table = pd.concat(pd.read_parquet(io.BytesIO(blobs.download_blob(f).data)) for f in files)
    assert table["run_id"].tolist() == ["run-a", "run-b"]
    assert table["promoted"].tolist() == [False, True]
    assert set(table["dataset_version"]) == {dataset}
    assert set(table["reference"]) == {"version 1"}
    assert set(table["recorded_at"]) == {"2026-01-02T03:04:05+00:00"}
