"""symbol_detection's train stage on a small sample: a real (if weak) RetinaNet, COCO metrics,
cancellation between batches, and the registered pyfunc model on raw images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from PIL import Image

from recipes.base import RecipeContext
from recipes.symbol_detection import recipe
from recipes.symbol_detection.dataset import Box, ImageLabels
from recipes.symbol_detection.sample_data import CLASSES, write_sample_data
from recipes.symbol_detection.training import evaluate
from shared.errors import StageCancelledError
from shared.tracking import MlflowRegistry

# TensorFlow on a shared machine: minutes of wall clock, not the suite default.
pytestmark = pytest.mark.timeout(1200)

PARAMS = {"epochs": 2, "image_size": 64, "batch_size": 4, "stratified_split_n_fold": 4}


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("symbols")
    from recipes.symbol_detection.sample_data import write_sample_data as write

    write(root / "raw", 11, images=16)
    params = recipe.parse_params(PARAMS)
    recipe.aggregate(root / "raw", root / "dataset", params)
    recipe.split(root / "dataset", root / "split", params)
    return root / "split"


def test_train_scores_with_coco_metrics_and_registers_a_pyfunc_on_raw_images(
    split_dir: Path, tmp_path: Path
) -> None:
    result = recipe.train(split_dir, tmp_path / "out", recipe.parse_params(PARAMS))
    metrics = result.metrics
    for name in ("mean_average_precision", "map_50", "map_50_95", "precision", "recall"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["mean_average_precision"] == metrics["map_50"] >= metrics["map_50_95"]
    assert metrics["train_images"] == 12 and metrics["evaluated_images"] == 4
    assert result.flavor == "pyfunc" and result.params["evaluated_on"] == "validation"
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(written["epoch_losses"]) == 2

    registry = MlflowRegistry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts"
    )
    record = registry.log_training(
        experiment_name="retrainer-symbol_detection",
        correlation_id="run-1",
        result=result,
        pip_requirements=recipe.pip_requirements,
        tags={"recipe": recipe.name},
    )
    mlflow.set_tracking_uri(registry.tracking_uri)
    model = mlflow.pyfunc.load_model(record.model_uri)
    jpegs = sorted((split_dir / "images").iterdir())[:3]
    sizes = [Image.open(p).size for p in jpegs]
    predicted = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in jpegs]}))
    assert list(predicted.columns) == ["boxes", "classes", "scores"] and len(predicted) == 3
    for (width, height), row in zip(sizes, predicted.itertuples(), strict=True):
        assert len(row.boxes) == len(row.classes) == len(row.scores) <= 100
        assert set(row.classes) <= set(CLASSES)
        assert all(
            0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height for x0, y0, x1, y1 in row.boxes
        )
        assert all(0.05 <= s <= 1 for s in row.scores)
    # Any raw image: a PNG of another size, as base64 text too.
    png = io.BytesIO()
    Image.new("RGB", (300, 90), "white").save(png, format="PNG")
    import base64

    again = model.predict(pd.DataFrame({"image": [base64.b64encode(png.getvalue()).decode()]}))
    assert len(again) == 1
    # The model carries its class: it loads and predicts where the project cannot be imported.
    code = (
        "import sys\n"
        "for name in ('recipes', 'shared', 'services', 'cli', 'coordinator'):\n"
        "    sys.modules[name] = None\n"
        "import mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({record.model_uri!r})\n"
        f"image = open({str(jpegs[0])!r}, 'rb').read()\n"
        "print(len(model.predict(pd.DataFrame({'image': [image]}))))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri}
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().splitlines()[-1] == "1"


class CancelledAfter(RecipeContext):
    """Cancelled at the ``limit``-th checkpoint: proves the checks run between batches."""

    calls: int
    limit: int

    def __init__(self, limit: int) -> None:
        super().__init__(max_workers=1)
        object.__setattr__(self, "calls", 0)
        object.__setattr__(self, "limit", limit)

    def check_cancelled(self) -> None:
        object.__setattr__(self, "calls", self.calls + 1)
        if self.calls >= self.limit:
            raise StageCancelledError()


def test_a_cancelled_run_stops_between_batches(split_dir: Path, tmp_path: Path) -> None:
    ctx = CancelledAfter(limit=3)
    params = recipe.parse_params({**PARAMS, "epochs": 50})
    with pytest.raises(StageCancelledError):
        recipe.train(split_dir, tmp_path / "out", params, ctx)
    # Epoch 1's check, then the first batches' checks: far from 50 epochs.
    assert ctx.calls == 3


def test_evaluate_perfect_and_empty_detections() -> None:
    import numpy as np

    item = ImageLabels("a.jpg", "jpg", 100, 50, (Box("valve", 0.1, 0.2, 0.5, 0.6),))
    image = Image.new("RGB", (100, 50))
    exact = (np.array([[10.0, 10.0, 50.0, 30.0]]), np.array([0]), np.array([0.9]))
    scores = evaluate([item], [image], [exact], ["valve", "pump"], 0.5)
    assert scores["mean_average_precision"] == pytest.approx(1.0)
    assert scores["map_50_95"] == pytest.approx(1.0)
    assert scores["precision"] == scores["recall"] == 1.0
    wrong_class = (exact[0], np.array([1]), exact[2])
    assert evaluate([item], [image], [wrong_class], ["valve", "pump"], 0.5)["recall"] == 0.0
    none = (np.zeros((0, 4)), np.zeros(0, dtype=int), np.zeros(0))
    assert evaluate([item], [image], [none], ["valve", "pump"], 0.5) == {
        "mean_average_precision": 0.0,
        "map_50": 0.0,
        "map_50_95": 0.0,
        "precision": 0.0,
        "recall": 0.0,
    }


def test_a_split_for_azure_ml_is_refused_locally(tmp_path: Path) -> None:
    write_sample_data(tmp_path / "raw", 2, images=10)
    params = recipe.parse_params(
        {**PARAMS, "datastore": "workspaceblobstore", "datastore_path": "drawings"}
    )
    recipe.aggregate(tmp_path / "raw", tmp_path / "dataset", params)
    recipe.split(tmp_path / "dataset", tmp_path / "split", params)
    with pytest.raises(Exception, match="local training needs the images"):
        recipe.train(tmp_path / "split", tmp_path / "out", params)
