"""The MLflow adapter against a real MLflow tracking store (SQLite + file artifacts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sklearn.cluster import KMeans

from recipes.base import TrainResult
from shared.tracking import BEST_MODEL_TAG, MlflowRegistry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MlflowRegistry:
    root = tmp_path_factory.mktemp("mlflow")
    return MlflowRegistry(f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "artifacts")


def _train_result(seed: int) -> TrainResult:
    model = KMeans(n_clusters=2, n_init=1, random_state=seed).fit([[0.0], [1.0], [10.0], [11.0]])
    return TrainResult(
        model=model,
        flavor="sklearn",
        metrics={"silhouette": 0.5 + seed / 100},
        params={"seed": seed},
    )


def test_training_run_registration_and_promotion(registry: MlflowRegistry, tmp_path: Path) -> None:
    artifact = tmp_path / "report.txt"
    artifact.write_text("hello")
    result = _train_result(1)
    result = TrainResult(**{**result.__dict__, "artifacts": [artifact]})
    record = registry.log_training(
        experiment_name="retrainer-test",
        correlation_id="run-1",
        result=result,
        pip_requirements=["scikit-learn"],
        tags={"recipe": "test"},
    )
    again = registry.log_training(
        experiment_name="retrainer-test",
        correlation_id="run-1",
        result=result,
        pip_requirements=["scikit-learn"],
        tags={"recipe": "test"},
    )
    assert again.run_id == record.run_id, "one MLflow run per pipeline run"

    version = registry.create_model_version(
        "clusters",
        model_uri=record.model_uri,
        run_id=record.run_id,
        correlation_id="run-1",
        tags={"metric.silhouette": "0.51", "dataset_version": "artifacts/cache/x"},
    )
    duplicate = registry.create_model_version(
        "clusters",
        model_uri=record.model_uri,
        run_id=record.run_id,
        correlation_id="run-1",
        tags={},
    )
    assert duplicate.version == version.version, "registering is idempotent per run"
    assert version.tags["dataset_version"] == "artifacts/cache/x"
    assert version.metric("silhouette") == pytest.approx(0.51)

    assert registry.get_champion("clusters") is None
    registry.promote("clusters", version.version)
    champion = registry.get_champion("clusters")
    assert champion is not None and champion.version == version.version
    assert champion.tags[BEST_MODEL_TAG] == "true"

    second = registry.log_training(
        experiment_name="retrainer-test",
        correlation_id="run-2",
        result=_train_result(2),
        pip_requirements=["scikit-learn"],
        tags={},
    )
    v2 = registry.create_model_version(
        "clusters",
        model_uri=second.model_uri,
        run_id=second.run_id,
        correlation_id="run-2",
        tags={},
    )
    registry.promote("clusters", v2.version)
    assert registry.get_model_version("clusters", version.version).tags[BEST_MODEL_TAG] == "false"
    assert registry.get_model_version("clusters", v2.version).tags[BEST_MODEL_TAG] == "true"

    import mlflow.pyfunc

    mlflow.set_tracking_uri(registry.tracking_uri)
    loaded = mlflow.pyfunc.load_model("models:/clusters@champion")
    assert len(loaded.predict([[0.0], [10.0]])) == 2
