"""The whole stack as separate processes: coordinator + five workers on embedded defaults.

These run exactly what ``retrainer up`` runs (cli/stack.py), talking over the SQLite
bus, the local blob store and MLflow on SQLite.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from cli.main import prepare_state, stack_env, upload_sample_data, watch_run
from cli.stack import Stack, free_port
from shared.bootstrap import create_blob_store
from shared.settings import CommonSettings
from tests.e2e.slow_recipes import EPOCH_DIR_ENV
from tests.waiting import WAIT_S, wait_until

pytestmark = pytest.mark.slow

SAMPLE = "datasets/state-identifier/sample"


class Deployment:
    def __init__(
        self, stack: Stack, client: httpx.Client, settings: CommonSettings, epoch_dir: Path
    ) -> None:
        self.stack = stack
        self.client = client
        self.settings = settings
        self.epoch_dir = epoch_dir

    def run(self, recipe: str, data: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post(
            "/runs", json={"recipe": recipe, "data": data, "params": params or {}}
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait(self, run_id: str) -> dict[str, Any]:
        return watch_run(self.client, run_id, out=lambda _line: None, poll_s=0.2, timeout_s=WAIT_S)

    def stage(self, run_id: str, name: str) -> dict[str, Any]:
        run = self.client.get(f"/runs/{run_id}").json()
        return next(s for s in run["stages"] if s["name"] == name)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[Deployment]:
    state_dir = tmp_path_factory.mktemp("state")
    monkeypatch_module.setenv("RETRAINER_STATE_DIR", str(state_dir))
    settings = CommonSettings()
    upload_sample_data(settings, "state_identifier", SAMPLE, seed=3)
    prepare_state(settings)
    port = free_port()
    env = {
        **stack_env(settings, port),
        "RETRAINER_RECIPE_MODULES": '["tests.e2e.slow_recipes"]',
        "RETRAINER_BUS_LOCK_DURATION_S": "2",
        "RETRAINER_CODE_VERSION": "e2e-test",
        EPOCH_DIR_ENV: str(state_dir / "epochs"),
    }
    stack = Stack(env, log_dir=state_dir / "logs")
    stack.start()
    try:
        url = f"http://127.0.0.1:{port}"
        stack.wait_ready(url)
        with httpx.Client(base_url=url, timeout=10.0) as client:
            yield Deployment(stack, client, settings, state_dir / "epochs")
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _mlflow_client(settings: CommonSettings) -> Any:
    import mlflow

    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    return mlflow.MlflowClient()


def test_run_succeeds_and_champion_predicts_on_raw_windows(deployment: Deployment) -> None:
    run = deployment.run("state_identifier", SAMPLE)
    final = deployment.wait(run["id"])

    assert final["status"] == "succeeded", final
    assert [s["status"] for s in final["stages"]] == ["succeeded"] * 5
    assert all(s["attempt"] == 1 for s in final["stages"])
    assert {"silhouette", "dunn_index", "inertia"} <= set(final["metrics"])
    assert final["model"]["name"] == "state_identifier"
    assert final["model"]["champion"] is True

    import mlflow.pyfunc

    client = _mlflow_client(deployment.settings)
    version = client.get_model_version_by_alias("state_identifier", "champion")
    assert str(version.version) == str(final["model"]["version"])
    assert version.tags["correlation_id"] == run["id"]
    assert version.tags["best_model"] == "true"
    assert version.tags["code_version"] == "e2e-test"
    assert version.tags["dataset_version"].startswith("artifacts/cache/aggregation/")
    assert float(version.tags["metric.silhouette"]) == pytest.approx(final["metrics"]["silhouette"])

    store = create_blob_store(deployment.settings)
    first = next(iter(store.list_blobs(SAMPLE + "/")))
    raw = pd.read_csv(io.BytesIO(store.download_blob(first.name).data))
    model = mlflow.pyfunc.load_model("models:/state_identifier@champion")
    labels = model.predict(raw.head(600))
    assert 0 < len(labels) < 600, "one label per window, not per row"
    assert set(labels) <= {0, 1, 2}

    # Same data again: the expensive stages come from the cache and the equal model is not
    # promoted over the champion.
    again = deployment.wait(deployment.run("state_identifier", SAMPLE)["id"])
    assert again["status"] == "succeeded", again
    cached = {s["name"]: s["cached"] for s in again["stages"]}
    assert cached == {
        "aggregation": True,
        "split": True,
        "train": True,
        "register": False,
        "tag": False,
    }
    assert again["model"]["champion"] is False
    assert (
        client.get_model_version_by_alias("state_identifier", "champion").version == version.version
    )


def test_malformed_data_fails_at_aggregation_naming_the_file(deployment: Deployment) -> None:
    store = create_blob_store(deployment.settings)
    store.upload_blob(
        "datasets/broken/raw/part-1.csv",
        b"timestamp,temperature\n2026-01-01T00:00:00,20.5\n2026-01-01T00:00:01,hot\n",
    )
    final = deployment.wait(deployment.run("state_identifier", "datasets/broken/raw")["id"])

    assert final["status"] == "failed"
    aggregation = final["stages"][0]
    assert aggregation["status"] == "failed"
    assert "part-1.csv" in aggregation["error"] and "row 2" in aggregation["error"]
    assert "part-1.csv" in final["error"]
    assert [s["status"] for s in final["stages"][1:]] == ["pending"] * 4
    assert final.get("model") is None
    client = _mlflow_client(deployment.settings)
    assert client.search_model_versions(f"tags.correlation_id = '{final['id']}'") == []


def test_unknown_recipe_is_refused_with_422(deployment: Deployment) -> None:
    response = deployment.client.post(
        "/runs", json={"recipe": "nope", "data": SAMPLE, "params": {}}
    )
    assert response.status_code == 422
    assert "nope" in response.text and "state_identifier" in response.text


def test_worker_killed_mid_stage_still_ends_in_success(deployment: Deployment) -> None:
    run = deployment.run("slow_state_identifier", SAMPLE)
    wait_until(
        lambda: deployment.stage(run["id"], "train")["status"] == "running", "train to start"
    )
    killed_pid = deployment.stack.pid("train")
    deployment.stack.kill("train")  # SIGKILL: no cleanup, the message stays locked
    assert deployment.stack.restart_dead() == ["train"]
    assert deployment.stack.pid("train") != killed_pid

    final = deployment.wait(run["id"])

    assert final["status"] == "succeeded", final
    train = next(s for s in final["stages"] if s["name"] == "train")
    assert train["status"] == "succeeded"
    assert final["model"]["name"] == "slow_state_identifier"


def test_image_classification_runs_through_the_stack(deployment: Deployment) -> None:
    prefix = "datasets/image-classification/sample"
    upload_sample_data(deployment.settings, "image_classification", prefix, seed=5)
    # Offline: no ImageNet weights; a tiny MobileNet so CPU training takes seconds.
    params = {"weights": "none", "image_size": 32, "alpha": 0.25, "epochs": 1}

    final = deployment.wait(deployment.run("image_classification", prefix, params)["id"])

    assert final["status"] == "succeeded", final
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro"} <= set(final["metrics"])
    assert final["model"]["name"] == "image_classification"
    client = _mlflow_client(deployment.settings)
    version = client.get_model_version("image_classification", str(final["model"]["version"]))
    artifacts = [a.path for a in client.list_artifacts(version.run_id)]
    assert any(path.endswith(".png") for path in artifacts), artifacts

    import mlflow.pyfunc
    import numpy as np

    model = mlflow.pyfunc.load_model(f"models:/image_classification/{version.version}")
    probabilities = np.asarray(model.predict(np.zeros((2, 32, 32, 3), dtype="float32")))
    assert probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_cancel_stops_an_in_process_training_at_its_next_epoch_and_frees_the_worker(
    deployment: Deployment,
) -> None:
    """A 20-epoch training is cancelled during its third epoch: it ends that epoch and starts
    no other, the run is ``cancelled`` with no model, and the train worker (one stage at a
    time) takes the next run's training. Counted in epochs, not seconds."""
    epochs = deployment.epoch_dir / "cancelled"
    params = {"epochs": 20, "gate": "cancelled"}
    run = deployment.run("epochs_state_identifier", SAMPLE, params)
    for epoch in (1, 2):
        wait_until((epochs / f"started-{epoch}").exists, f"epoch {epoch} to start")
        (epochs / f"end-{epoch}").touch()
    wait_until(lambda: (epochs / "started-3").exists(), "epoch 3 to start")

    cancelled = deployment.client.post(f"/runs/{run['id']}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    wait_until(lambda: (epochs / "cancel-seen").exists(), "the cancel to reach the training")
    # From now on every epoch would end at once: only the checkpoint can stop the training.
    (epochs / "open").touch()
    following = deployment.run("epochs_state_identifier", SAMPLE, {"epochs": 2, "gate": "next"})
    (deployment.epoch_dir / "next").mkdir(parents=True, exist_ok=True)
    (deployment.epoch_dir / "next" / "open").touch()
    after = deployment.wait(following["id"])

    assert after["status"] == "succeeded", after
    assert (deployment.epoch_dir / "next" / "ended-2").exists()
    started = sorted(int(p.name.split("-")[1]) for p in epochs.glob("started-*"))
    assert started == [1, 2, 3], "the training went on past the epoch it was cancelled in"
    assert (epochs / "ended-3").exists()
    final = deployment.client.get(f"/runs/{run['id']}").json()
    assert final["status"] == "cancelled"
    train = next(s for s in final["stages"] if s["name"] == "train")
    assert train["status"] == "cancelled"
    assert [(a["attempt"], a["outcome"]) for a in train["attempts"]] == [(1, "cancelled")]
    assert [s["status"] for s in final["stages"][3:]] == ["pending", "pending"]
    assert final.get("model") is None
    client = _mlflow_client(deployment.settings)
    assert client.search_model_versions(f"tags.correlation_id = '{run['id']}'") == []
