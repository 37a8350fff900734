"""The text classification recipe through the whole process stack (``retrainer up``).

Three uploads against one baseline profile written by ``retrainer baseline``: the sample (it
succeeds, registers an ONNX model and promotes it), the sample with a drifted class balance
(it succeeds with the drift flagged in the report), and the sample with 40 % empty texts (it
fails at aggregation naming the check, and registers nothing).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from cli.main import prepare_state, stack_env, upload_sample_data, watch_run, write_baseline
from cli.stack import Stack, free_port
from recipes.text_classification.sample_data import write_sample_data
from shared.blobs.transfer import upload_directory
from shared.bootstrap import create_blob_store
from shared.history import history_blob
from shared.settings import CommonSettings

# Three runs with model zoos on a shared machine: minutes, not the suite default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

RECIPE = "text_classification"
SAMPLE = "datasets/text-classification/sample"
DRIFTED = "datasets/text-classification/drifted"
EMPTY = "datasets/text-classification/mostly-empty"
BASELINE = "baselines/text-classification/baseline.json"
PARAMS = {
    "baseline_profile": BASELINE,
    "zoo": ["complement_nb", "ridge", "sgd", "knn"],
    "tuning_trials": 4,
}
RUN_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Any]]:
    state_dir = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAINER_STATE_DIR", str(state_dir))
        settings = CommonSettings()
        upload_sample_data(settings, RECIPE, SAMPLE, seed=3)
        write_baseline(settings, RECIPE, SAMPLE, BASELINE, {})
        store = create_blob_store(settings.model_copy(update={"blob_events": False}))
        with tempfile.TemporaryDirectory() as tmp:
            drifted = {"billing": 0.7, "delivery": 0.1, "technical": 0.1, "account": 0.1}
            write_sample_data(Path(tmp) / "drifted", 4, class_weights=drifted)
            write_sample_data(Path(tmp) / "empty", 4, empty_fraction=0.4)
            upload_directory(store, Path(tmp) / "drifted", DRIFTED)
            upload_directory(store, Path(tmp) / "empty", EMPTY)
        prepare_state(settings)
        port = free_port()
        env = {**stack_env(settings, port), "RETRAINER_CODE_VERSION": "e2e-text"}
        stack = Stack(env, log_dir=state_dir / "logs")
        stack.start()
        try:
            url = f"http://127.0.0.1:{port}"
            stack.wait_ready(url, timeout_s=240)
            with httpx.Client(base_url=url, timeout=10.0) as client:
                yield client, settings
        finally:
            stack.stop()


def start(client: httpx.Client, data: str) -> str:
    response = client.post("/runs", json={"recipe": RECIPE, "data": data, "params": PARAMS})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["id"]
    return run_id


def wait(client: httpx.Client, run_id: str) -> dict[str, Any]:
    return watch_run(client, run_id, out=lambda _line: None, poll_s=0.5, timeout_s=RUN_TIMEOUT_S)


def test_sample_drifted_and_mostly_empty_uploads(deployment: tuple[httpx.Client, Any]) -> None:
    import mlflow

    client, settings = deployment
    runs = {data: start(client, data) for data in (SAMPLE, DRIFTED, EMPTY)}
    sample, drifted, empty = (wait(client, runs[data]) for data in (SAMPLE, DRIFTED, EMPTY))
    store = create_blob_store(settings)
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    registry = mlflow.MlflowClient()

    # The sample: an ONNX model, registered and promoted, that takes raw text.
    assert sample["status"] == "succeeded", sample
    assert sample["model"]["name"] == RECIPE and sample["model"]["champion"] is True
    assert sample["metrics"]["onnx_agreement"] >= 0.995
    uri = f"models:/{RECIPE}/{sample['model']['version']}"
    assert "onnx" in mlflow.models.get_model_info(uri).flavors
    predicted = mlflow.pyfunc.load_model(uri).predict(
        pd.DataFrame({"text": ["I was CHARGED twice!!! refund please", "app crashes, error E500"]})
    )
    assert predicted["label"].tolist() == ["billing", "technical"]
    [report] = sample["reports"]
    assert report["name"] == "drift_report"
    page = client.get(report["url"])
    assert page.status_code == 200 and "No drift" in page.text

    # The drifted sample: validated, drift flagged, still a model.
    assert drifted["status"] == "succeeded", drifted
    aggregation = drifted["stages"][0]
    assert "train: class_balance" in aggregation["details"]["drift"]
    assert "Drift flagged" in client.get(drifted["reports"][0]["url"]).text

    # The mostly empty sample: failed at aggregation naming the check; nothing registered.
    assert empty["status"] == "failed", empty
    stage = empty["stages"][0]
    assert stage["name"] == "aggregation" and stage["status"] == "failed"
    assert "[check empty_text]" in empty["error"] and "column 'text'" in empty["error"]
    assert empty["model"] is None
    assert registry.search_model_versions(f"tags.correlation_id = '{runs[EMPTY]}'") == []

    # One history row per successful run, none for the failed one.
    for run in (sample, drifted):
        blob = store.download_blob(history_blob(RECIPE, run["id"])).data
        row = pd.read_parquet(io.BytesIO(blob)).iloc[0]
        assert (row["run_id"], row["dataset_version"]) == (run["id"], run["outputs"]["dataset"])
        assert row["rows_train"] == 3000 and row["model_version"] == str(run["model"]["version"])
    assert drifted_row_share(store, drifted["id"]) > 0.6
    assert not list(store.list_blobs(history_blob(RECIPE, runs[EMPTY])))


def drifted_row_share(store: Any, run_id: str) -> float:
    blob = store.download_blob(history_blob(RECIPE, run_id)).data
    return float(pd.read_parquet(io.BytesIO(blob))["share_billing"].iloc[0])
