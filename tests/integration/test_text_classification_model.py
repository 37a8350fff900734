"""The text classifier as registered: MLflow's onnx flavour, loaded by pyfunc and onnxruntime.

The recipe trains on generated data (tiny zoo, few trials), the real MLflow adapter logs it on
SQLite with its zoo members and trials as child runs, and both ways of serving it take raw
text and give the labels the scikit-learn pipeline gives.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest

from recipes.base import RecipeContext
from recipes.text_classification import recipe
from recipes.text_classification.params import COMPARISON_ONLY, MODEL_NAMES, ModelName
from shared.tracking import PARENT_RUN_TAG, MlflowRegistry


def test_registered_onnx_model_takes_raw_text_in_pyfunc_and_onnxruntime(tmp_path: Path) -> None:
    recipe.write_sample_data(tmp_path / "raw", 5)
    params = recipe.parse_params({"zoo": ["complement_nb", "sgd"], "tuning_trials": 2})
    ctx = RecipeContext(max_workers=1)
    recipe.aggregate(tmp_path / "raw", tmp_path / "dataset", params, ctx)
    recipe.split(tmp_path / "dataset", tmp_path / "split", params, ctx)
    result = recipe.train(tmp_path / "split", tmp_path / "out", params, ctx)
    registry = MlflowRegistry(
        f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "artifacts"
    )

    record = registry.log_training(
        experiment_name="retrainer-text_classification",
        correlation_id="run-1",
        result=result,
        pip_requirements=recipe.pip_requirements,
        tags={"recipe": recipe.name},
    )

    client = mlflow.MlflowClient(registry.tracking_uri)
    children = client.search_runs(
        [record.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{record.run_id}'"
    )
    assert sorted(run.info.run_name for run in children) == [
        "trial/000",
        "trial/001",
        "zoo/complement_nb",
        "zoo/sgd",
    ]
    zoo_run = next(run for run in children if run.info.run_name == "zoo/sgd")
    assert "f1_macro" in zoo_run.data.metrics
    assert [a.path for a in client.list_artifacts(zoo_run.info.run_id)] == ["sgd.pkl"]

    test = pd.read_parquet(tmp_path / "split" / "test.parquet")
    with open(tmp_path / "out" / "sklearn_pipeline.pkl", "rb") as file:
        expected = pickle.load(file).predict(test["text"])

    model = mlflow.pyfunc.load_model(record.model_uri)
    predicted = model.predict(pd.DataFrame({"text": test["text"]}))
    assert list(predicted.columns) == ["label", "score"]
    assert np.mean(predicted["label"].to_numpy() == expected) >= 0.995
    # A batch that does not fit: the reason first, never the batch.
    with pytest.raises(mlflow.exceptions.MlflowException) as caught:
        model.predict(pd.DataFrame({"body": test["text"]}))
    assert caught.value.message.startswith("Model is missing inputs ['text']"), caught.value.message
    assert test["text"].iloc[0] not in caught.value.message
    # The onnx flavour loads as ever.
    assert isinstance(mlflow.onnx.load_model(record.model_uri), onnx.ModelProto)

    local = Path(mlflow.artifacts.download_artifacts(record.model_uri, dst_path=str(tmp_path)))
    onnx_file = next(local.rglob("*.onnx"))
    assert onnx.load(str(onnx_file)).metadata_props
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    labels, scores = session.run(None, {"text": test["text"].to_numpy(dtype=object)[:, None]})
    assert np.mean(labels == expected) >= 0.995
    assert scores.shape == (len(test),)


TEXTS = [
    "REFUND refund Refund the double charge of $30 now!!!",  # a repeated word: sublinear tf
    "The app crashes; see https://x.io/a and the app logs",
    "parcel late, parcel lost, parcel never delivered",
    "",
    "   !!! 123",
    "Only a URL: https://x.io/a",
    "log in fails: password reset email never arrives",
]
TRAIN = {
    "billing": ["refund the charge", "charged twice refund", "invoice amount wrong refund"],
    "delivery": ["parcel late", "package lost courier", "parcel never arrived late"],
    "technical": ["app crashes", "error on upload app", "screen freezes app crashes"],
    "account": ["password reset", "log in fails", "account locked password"],
}


@pytest.mark.parametrize("model", [m for m in MODEL_NAMES if m not in COMPARISON_ONLY])
@pytest.mark.parametrize("settings", [{}, {"tfidf__sublinear_tf": False, "tfidf__norm": "l1"}])
def test_every_exportable_model_predicts_the_same_in_onnx(
    model: ModelName, settings: dict[str, object]
) -> None:
    from recipes.text_classification.cleaning import clean_texts
    from recipes.text_classification.onnx_export import (
        conversion_pipeline,
        predict,
        session,
        to_onnx,
    )
    from recipes.text_classification.training import _with_cleaner
    from recipes.text_classification.zoo import member

    texts = [text for texts in TRAIN.values() for text in texts] * 3
    labels = [label for label, texts in TRAIN.items() for _ in texts] * 3
    fitted = member(model, seed=0, max_features=100).set_params(**settings)
    fitted.fit(clean_texts(texts), labels)
    pipeline = _with_cleaner(fitted)
    expected = pipeline.predict(TEXTS)

    assert (conversion_pipeline(pipeline).predict(TEXTS) == expected).all()
    assert (predict(session(to_onnx(pipeline)), TEXTS) == expected).all()
