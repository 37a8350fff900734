"""Reports a stage wrote, served by the API; and ``retrainer baseline`` writing a first profile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from cli.main import main, upload_sample_data
from coordinator.api import create_app
from shared.bootstrap import create_blob_store
from shared.bus.sqlite import SqliteMessageBus
from shared.messages import StageStarted, StageSucceeded
from shared.settings import CommonSettings
from shared.topology import build_topology
from tests.integration.test_coordinator_api import Stack, make_coordinator

DATASET = "artifacts/cache/aggregation/abc"
HTML = b"<!doctype html><h1>Drift report</h1><script>alert(1)</script>"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Stack]:
    coordinator = make_coordinator(tmp_path)
    bus = SqliteMessageBus(tmp_path / "bus.sqlite", topology=build_topology())
    with TestClient(create_app(coordinator=coordinator, run_loops=False)) as client:
        yield Stack(client, coordinator, bus)
    coordinator.close()
    bus.close()


def aggregated(api: Stack, reports: dict[str, str]) -> str:
    run_id = UUID(api.start()["id"])
    api.report(
        StageStarted(correlation_id=run_id, stage="aggregation", attempt=1, worker="w"),
        StageSucceeded(
            correlation_id=run_id,
            stage="aggregation",
            attempt=1,
            outputs={"dataset": DATASET},
            details={"rows": 3, "reports": reports},
        ),
    )
    return str(run_id)


def test_a_stage_report_is_listed_and_served_sandboxed(api: Stack) -> None:
    api.coordinator.blobs.upload_blob(f"{DATASET}/validation/drift_report.html", HTML)
    run_id = aggregated(api, {"drift_report": "validation/drift_report.html"})

    run = api.run(run_id)
    url = f"/runs/{run_id}/reports/aggregation/drift_report"
    assert run["reports"] == [{"stage": "aggregation", "name": "drift_report", "url": url}]
    response = api.client.get(url)
    assert response.status_code == 200
    assert response.content == HTML
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"].startswith("sandbox;")
    assert response.headers["x-content-type-options"] == "nosniff"


def test_unknown_unlisted_or_missing_reports_are_404(api: Stack) -> None:
    run_id = aggregated(api, {"drift_report": "validation/missing.html"})

    for path in (
        f"/runs/{run_id}/reports/aggregation/drift_report",  # listed, blob missing
        f"/runs/{run_id}/reports/aggregation/other",  # not listed
        f"/runs/{run_id}/reports/split/drift_report",  # stage not done
        "/runs/00000000-0000-0000-0000-000000000000/reports/aggregation/drift_report",
    ):
        response = api.client.get(path)
        assert response.status_code == 404, path
        assert response.json()["detail"]
    assert api.client.get(f"/runs/{run_id}/reports/nope/drift_report").status_code == 422


def test_retrainer_baseline_writes_a_first_profile_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RETRAINER_STATE_DIR", str(tmp_path / "state"))
    settings = CommonSettings()
    upload_sample_data(settings, "text_classification", "datasets/text/sample", seed=1)
    out = "baselines/text/baseline.json"

    assert main(["baseline", "text_classification", "datasets/text/sample", "--out", out]) == 0
    again = main(["baseline", "text_classification", "datasets/text/sample", "--out", out])
    empty = main(["baseline", "text_classification", "datasets/nothing", "--out", "baselines/x"])
    other = main(["baseline", "state_identifier", "datasets/text/sample", "--out", "baselines/y"])

    profile = json.loads(create_blob_store(settings).download_blob(out).data)
    assert profile["labels"] == ["account", "billing", "delivery", "technical"]
    assert profile["rows"] == 3000 and profile["tolerances"]["class_balance_max_diff"] == 0.1
    assert (again, empty, other) == (2, 2, 2)
    captured = capsys.readouterr()
    assert f"-p baseline_profile={out}" in captured.out
    assert f"{out} exists; pass --force" in captured.err
    assert "no blobs under datasets/nothing/" in captured.err
    assert "does not validate against a baseline profile" in captured.err
