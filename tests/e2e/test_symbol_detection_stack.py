"""Symbol detection through the whole process stack (``retrainer up``), started by uploads.

A sample zip goes through ``retrainer load-zip`` into ``datasets/symbol-detection/images`` and
``.../labels``; a trigger rule on that prefix starts a run by itself (the local blob store's
events, debounced), whose five stages succeed: a model version with COCO mAP metrics and the
data-asset version in its lineage, promoted. Appending 20 newly labelled drawings starts a
second run, on all 44 drawings, whose data asset is version 2.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli.main import main, prepare_state, stack_env, watch_run
from cli.stack import Stack, free_port
from recipes.symbol_detection.sample_data import write_sample_zip
from shared.settings import CommonSettings
from tests.waiting import wait_until

# TensorFlow in the train worker on a shared machine: minutes, not the suite default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

RECIPE = "symbol_detection"
PREFIX = "datasets/symbol-detection"
# Small and quick: the detector is real, its score is not the point here.
PARAMS = {"epochs": 2, "image_size": 64, "batch_size": 8, "stratified_split_n_fold": 4}
RULES = [
    {
        "container": "datasets",
        "prefix": "symbol-detection/",
        "recipe": RECIPE,
        "data": PREFIX,
        "params": PARAMS,
    }
]
RUN_TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    state_dir = tmp_path_factory.mktemp("state")
    env = {
        "RETRAINER_STATE_DIR": str(state_dir),
        "RETRAINER_TRIGGER_RULES": json.dumps(RULES),
        "RETRAINER_TRIGGER_DEBOUNCE_S": "3",
        "RETRAINER_CODE_VERSION": "e2e-symbols",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        settings = CommonSettings()
        prepare_state(settings)
        port = free_port()
        stack = Stack({**env, **stack_env(settings, port)}, log_dir=state_dir / "logs")
        stack.start()
        try:
            url = f"http://127.0.0.1:{port}"
            stack.wait_ready(url, timeout_s=600)
            with httpx.Client(base_url=url, timeout=10.0) as client:
                yield client
        finally:
            stack.stop()


def runs(client: httpx.Client) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = client.get("/runs").json()["runs"]
    return listed


def load(tmp_path: Path, images: int, seed: int, name_prefix: str) -> None:
    archive = write_sample_zip(
        tmp_path / f"{name_prefix}.zip", images=images, seed=seed, name_prefix=name_prefix
    )
    assert main(["load-zip", str(archive), PREFIX]) == 0


def next_run(client: httpx.Client, seen: int) -> dict[str, Any]:
    def more() -> list[dict[str, Any]] | None:
        listed = runs(client)
        return listed if len(listed) > seen else None

    started = wait_until(more, "a triggered run")
    assert started is not None
    assert len(started) == seen + 1, started
    newest = max(started, key=lambda run: run["created_at"])
    return watch_run(
        client, newest["id"], out=lambda _line: None, poll_s=1.0, timeout_s=RUN_TIMEOUT_S
    )


def test_uploads_start_runs_that_register_promote_and_version_the_data(
    deployment: httpx.Client, tmp_path: Path
) -> None:
    import mlflow
    import pandas as pd

    client = deployment
    load(tmp_path, 24, seed=1, name_prefix="drawing")
    first = next_run(client, 0)

    assert first["status"] == "succeeded", first
    assert first["trigger"] == "blob" and first["data"] == PREFIX
    assert [s["status"] for s in first["stages"]] == ["succeeded"] * 5
    assert first["stages"][0]["details"]["images"] == 24
    model = first["model"]
    assert model["name"] == RECIPE and model["champion"] is True
    for metric in ("mean_average_precision", "map_50_95", "precision", "recall"):
        assert 0.0 <= first["metrics"][metric] <= 1.0
    asset = first["data_asset"]
    assert asset["name"] == f"{RECIPE}-training-data" and asset["version"] == "1"

    settings = CommonSettings()
    mlflow.set_tracking_uri(settings.resolved_mlflow_tracking_uri)
    version = mlflow.MlflowClient().get_model_version(RECIPE, str(model["version"]))
    assert version.tags["data_asset"] == asset["name"]
    assert version.tags["data_asset_version"] == "1"
    detector = mlflow.pyfunc.load_model(f"models:/{RECIPE}/{model['version']}")
    drawing = next(Path(settings.resolved_blob_local_root, PREFIX, "images").iterdir())
    predicted = detector.predict(pd.DataFrame({"image": [drawing.read_bytes()]}))
    assert list(predicted.columns) == ["boxes", "classes", "scores"]

    # 20 new labelled drawings appended to the store: a second run, on all 44.
    load(tmp_path, 20, seed=2, name_prefix="batch2")
    second = next_run(client, 1)
    assert second["status"] == "succeeded", second
    assert second["stages"][0]["details"]["images"] == 44
    assert second["data_asset"]["name"] == asset["name"]
    assert second["data_asset"]["version"] == "2"
    assert second["model"]["version"] != model["version"]
