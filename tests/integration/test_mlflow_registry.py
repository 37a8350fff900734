"""The MLflow adapter against a real MLflow tracking store (SQLite + file artifacts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.pyfunc import PythonModel
from sklearn.cluster import KMeans

from recipes.base import ChildRun, ModelFlavor, TrainResult
from shared.tracking import BEST_MODEL_TAG, PARENT_RUN_TAG, MlflowRegistry


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
    registry.promote("clusters", version.version, tags={"promoted_by": "test"})
    champion = registry.get_champion("clusters")
    assert champion is not None and champion.version == version.version
    assert champion.tags[BEST_MODEL_TAG] == "true"
    assert champion.tags["promoted_by"] == "test"

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
    registry.promote("clusters", v2.version, tags={})
    assert registry.get_model_version("clusters", version.version).tags[BEST_MODEL_TAG] == "false"
    assert registry.get_model_version("clusters", v2.version).tags[BEST_MODEL_TAG] == "true"

    import mlflow.pyfunc

    mlflow.set_tracking_uri(registry.tracking_uri)
    loaded = mlflow.pyfunc.load_model("models:/clusters@champion")
    assert len(loaded.predict([[0.0], [10.0]])) == 2


def test_child_runs_are_nested_under_the_run_and_replaced_on_a_retry(
    registry: MlflowRegistry, tmp_path: Path
) -> None:
    table = tmp_path / "trial-1.csv"
    table.write_text("fold,auc\n0,0.8\n")
    children = [
        ChildRun(
            name=f"trial-{i}",
            params={"num_leaves": 8 * (i + 1), "space": {"lr": [0.01, 0.3]}},
            metrics={"cv_auc": 0.7 + i / 100, **{f"fold_{k}_auc": 0.7 for k in range(3)}},
            artifacts=[table] if i == 1 else [],
            tags={"trial": str(i)},
        )
        for i in range(3)
    ]
    result = TrainResult(**{**_train_result(3).__dict__, "children": children})

    def log() -> str:
        return registry.log_training(
            experiment_name="retrainer-children",
            correlation_id="run-children",
            result=result,
            pip_requirements=["scikit-learn"],
            tags={},
        ).run_id

    parent = log()
    client = MlflowClient(registry.tracking_uri)
    experiment = client.get_experiment_by_name("retrainer-children")
    assert experiment is not None

    def nested() -> list[Run]:
        return client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent}'",
            order_by=["attributes.run_name"],
        )

    found = nested()
    assert [r.info.run_name for r in found] == ["trial-0", "trial-1", "trial-2"]
    second = found[1]
    assert second.data.params["num_leaves"] == "16"
    assert second.data.metrics["cv_auc"] == pytest.approx(0.71)
    assert second.data.metrics["fold_2_auc"] == pytest.approx(0.7)
    assert second.data.tags["trial"] == "1" and second.data.tags["correlation_id"] == "run-children"
    assert second.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(second.info.run_id)] == ["trial-1.csv"]

    assert log() == parent, "a retry finds the run again, not one of its children"
    assert len(nested()) == 3, "a retry replaces the children instead of doubling them"


class _Doubler(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return model_input * 2


def test_pyfunc_and_lightgbm_flavors_are_logged_and_load(registry: MlflowRegistry) -> None:
    import lightgbm
    import mlflow.pyfunc

    rows = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0] * 10, "y": [1.0, 0.0, 1.0, 0.0] * 10})
    classifier = lightgbm.LGBMClassifier(n_estimators=5, min_child_samples=2, verbose=-1)
    classifier.fit(rows[["x"]], rows["y"])
    mlflow.set_tracking_uri(registry.tracking_uri)
    cases: tuple[tuple[ModelFlavor, Any], ...] = (("pyfunc", _Doubler()), ("lightgbm", classifier))
    for flavor, model in cases:
        record = registry.log_training(
            experiment_name="retrainer-flavors",
            correlation_id=f"run-{flavor}",
            result=TrainResult(
                model=model, flavor=flavor, metrics={}, input_example=rows[["x"]].head(2)
            ),
            pip_requirements=[],
            tags={},
        )
        predicted = mlflow.pyfunc.load_model(record.model_uri).predict(rows[["x"]].head(2))
        assert len(predicted) == 2, flavor


def test_a_model_is_logged_without_mlflows_warning_only_checks_and_loses_nothing(
    registry: MlflowRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's serving-input re-check and requirement comparison are skipped inside
    log_training only; what is written (signature, example, requirements, environment) is
    the same as with them."""
    import contextlib

    import mlflow
    import mlflow.models.utils as model_utils
    from mlflow.models import Model

    import shared.tracking

    example = pd.DataFrame({"x": [0.0, 10.0]})
    data = pd.DataFrame({"x": [0.0, 1.0, 10.0, 11.0]})
    model = KMeans(n_clusters=2, n_init=1, random_state=0).fit(data)
    result = TrainResult(
        model=model, flavor="sklearn", metrics={"silhouette": 0.9}, input_example=example
    )

    def log(correlation_id: str) -> Path:
        record = registry.log_training(
            experiment_name="retrainer-test",
            correlation_id=correlation_id,
            result=result,
            pip_requirements=["scikit-learn==1.0", "pandas"],
            tags={},
        )
        return Path(mlflow.artifacts.download_artifacts(record.model_uri))

    lean = log("lean-1")
    with monkeypatch.context() as patched:
        patched.setattr(
            shared.tracking, "_lean_model_logging", lambda skip: contextlib.nullcontext()
        )
        full = log("full-1")

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    assert files(lean) == files(full)
    for name in ("requirements.txt", "conda.yaml", "python_env.yaml"):
        assert (lean / name).read_text() == (full / name).read_text(), name
    assert (lean / "requirements.txt").read_text().split()[1:] == ["scikit-learn==1.0", "pandas"]
    assert Model.load(str(lean)).signature == Model.load(str(full)).signature
    assert Model.load(str(lean)).signature is not None
    assert len(mlflow.pyfunc.load_model(str(lean)).predict(example)) == 2

    # Outside log_training MLflow's own check runs as before (the hook is per thread and call).
    assert getattr(model_utils._validate_serving_input, "_retrainer_lean", False)
    native = next(p.parent for p in lean.rglob("serving_input_example.json"))
    serving = (native / "serving_input_example.json").read_text()
    assert len(model_utils._validate_serving_input(str(native), serving)) == 2
