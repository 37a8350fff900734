"""The text classification recipe, stage by stage on generated data (no runtime)."""

from __future__ import annotations

import json
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recipes.base import DatasetSummary, RecipeContext, TrainResult
from recipes.text_classification import recipe, write_baseline
from recipes.text_classification.cleaning import TextCleaner, clean_text, tokens
from recipes.text_classification.dataset import DATASET_FILE, REPORT_HTML, REPORT_JSON
from recipes.text_classification.language import is_not_english
from recipes.text_classification.onnx_export import predict, session, to_onnx
from recipes.text_classification.profile import BaselineProfile
from recipes.text_classification.sample_data import write_sample_data
from shared.errors import DataValidationError, StageCancelledError

TINY = {
    "zoo": ["complement_nb", "ridge", "knn"],
    "tuning_trials": 3,
    "baseline_profile": "baselines/text/baseline.json",
}
ROWS = {"train_rows": 800, "test_rows": 200}


def sample(root: Path, name: str, **options: Any) -> Path:
    raw = root / name
    write_sample_data(raw, 1, **{**ROWS, **options})
    return raw


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("baseline")
    path = root / "baseline.json"
    write_baseline(sample(root, "reference"), path, recipe.parse_params(TINY))
    return path


def context(baseline: Path | None) -> RecipeContext:
    blobs = {"baseline_profile": baseline} if baseline else {}
    return RecipeContext(max_workers=1, blob_inputs=blobs)


def aggregate(raw: Path, out: Path, baseline: Path | None, **params: Any) -> DatasetSummary:
    parsed = recipe.parse_params({**TINY, **params} if baseline else params)
    return recipe.aggregate(raw, out, parsed, context(baseline))


@dataclass(frozen=True)
class Trained:
    split_dir: Path
    out_dir: Path
    result: TrainResult


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, baseline: Path) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    params = recipe.parse_params(TINY)
    recipe.aggregate(sample(root, "raw"), root / "dataset", params, context(baseline))
    recipe.split(root / "dataset", root / "split", params, context(baseline))
    result = recipe.train(root / "split", root / "out", params, context(baseline))
    return Trained(root / "split", root / "out", result)


# --- cleaning ----------------------------------------------------------------------------


def test_cleaning_lowercases_and_strips_urls_digits_punctuation_and_stop_words() -> None:
    text = "REFUND my order #12345 NOW!!! See https://help.example.com/a?b=1 or www.x.io/p, thx"
    assert clean_text(text) == "refund order thx"
    assert clean_text("Can't log-in: error E404 (v2.1)") == "log error"
    assert clean_text("Café naïve") == "caf na ve", "only ASCII letters make words"
    assert clean_text(None) == clean_text(float("nan")) == clean_text("  ") == ""
    cleaned = TextCleaner().fit_transform(pd.DataFrame({"text": ["Parcel LATE", "x"]}))
    assert cleaned.tolist() == ["parcel late", ""]


@pytest.fixture(scope="module")
def onnx_cleaner() -> Any:
    """The cleaner alone as an ONNX graph (its output: the kept tokens of each row)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.pipeline import Pipeline

    from recipes.text_classification.onnx_export import TARGET_OPSET, register_converters

    register_converters()
    model = convert_sklearn(
        Pipeline([("clean", TextCleaner())]),
        initial_types=[("text", StringTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
    )
    return session(model)


_TEXT = st.text(
    alphabet=st.sampled_from(
        list("abcXYZ hello WORLD the and http https :// www. .com/ 123 !?,.-_#@ é İ K \t\n")
    ),
    max_size=60,
) | st.lists(
    st.sampled_from(["the", "Refund", "http://a.b/c", "www.x.y", "NOT", "a1b", "é", "  ", "!!"]),
    max_size=12,
).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=4))
def test_the_onnx_cleaner_keeps_exactly_the_tokens_python_keeps(
    onnx_cleaner: Any, texts: list[str]
) -> None:
    """Each row: the kept tokens, in order, then only tokens cleaning drops (no word)."""
    rows = onnx_cleaner.run(None, {"text": np.array(texts, dtype=object).reshape(-1, 1)})[0]
    for text, row in zip(texts, rows.reshape(len(texts), -1), strict=True):
        expected = tokens(text)
        assert list(row[: len(expected)]) == expected
        assert not [t for t in row[len(expected) :] if tokens(t) == [t]]


def test_stop_words_decide_the_language() -> None:
    assert is_not_english("Ich habe meine Rechnung nicht erhalten")
    assert is_not_english("Je n'ai pas reçu mon colis")
    assert not is_not_english("I have not received my parcel")
    assert not is_not_english("card declined twice"), "no stop words: no evidence"


# --- aggregation and validation ----------------------------------------------------------


def test_sample_data_passes_validation_without_drift(tmp_path: Path, baseline: Path) -> None:
    summary = aggregate(sample(tmp_path, "raw"), tmp_path / "out", baseline)

    assert summary.details["drift"] == []
    assert set(summary.details["sets"]) == {"train", "train_subset", "test", "test_subset"}
    assert summary.details["sets"]["train_subset"] == pytest.approx(160, abs=4)
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    checks = {c["check"] for s in report["sets"] for c in s["checks"]}
    assert checks == {
        "class_balance",
        "mean_text_length",
        "mean_word_length",
        "mean_sentiment",
        "vocabulary_overlap",
    }
    assert all(c["passed"] for s in report["sets"] for c in s["checks"])
    assert "No drift" in (tmp_path / "out" / REPORT_HTML).read_text()
    data = pd.read_parquet(tmp_path / "out" / DATASET_FILE)
    assert (data["text"].str.strip() != "").all(), "empty texts dropped"
    assert summary.reports == {"drift_report": REPORT_HTML}
    assert summary.history_record is not None
    assert summary.history_record["rows_train"] == 800
    shares = [float(v) for k, v in summary.history_record.items() if k.startswith("share_")]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-3)


def test_drifted_class_balance_passes_with_the_drift_flagged(
    tmp_path: Path, baseline: Path
) -> None:
    drifted = {"billing": 0.7, "delivery": 0.1, "technical": 0.1, "account": 0.1}
    summary = aggregate(sample(tmp_path, "raw", class_weights=drifted), tmp_path / "out", baseline)

    assert "train: class_balance" in summary.details["drift"]
    report = json.loads((tmp_path / "out" / REPORT_JSON).read_text())
    train = next(s for s in report["sets"] if s["name"] == "train")
    balance = next(c for c in train["checks"] if c["check"] == "class_balance")
    assert not balance["passed"] and balance["difference"] > balance["tolerance"]
    assert balance["value"]["billing"] > 0.6 and balance["baseline"]["billing"] < 0.4
    assert "billing" in balance["summary"]
    assert "Drift flagged" in (tmp_path / "out" / REPORT_HTML).read_text()


def test_mostly_empty_texts_fail_naming_the_set_column_check_and_figure(
    tmp_path: Path, baseline: Path
) -> None:
    with pytest.raises(DataValidationError) as failure:
        aggregate(sample(tmp_path, "raw", empty_fraction=0.4), tmp_path / "out", baseline)

    message = str(failure.value)
    assert "data set 'train', column 'text'" in message
    assert "[check empty_text]" in message and "above max_empty_text_fraction 5.0 %" in message
    assert "40." in message or "39." in message or "41." in message
    assert not (tmp_path / "out" / DATASET_FILE).exists()


def test_unknown_labels_and_foreign_texts_fail(tmp_path: Path, baseline: Path) -> None:
    raw = sample(tmp_path, "raw", non_english_fraction=0.2)
    test = pd.read_csv(raw / "test.csv")
    test.loc[3, "label"] = "refunds"
    test.to_csv(raw / "test.csv", index=False)

    with pytest.raises(DataValidationError) as failure:
        aggregate(raw, tmp_path / "out", baseline)

    message = str(failure.value)
    assert "[check english]" in message and "of the texts are not English" in message
    assert "data set 'test', column 'label'" in message and "['refunds']" in message
    assert "test.csv, row 4" in message and "[check known_label]" in message


def test_file_problems_name_the_file_and_column(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"body": ["hello"], "label": ["a"]}).to_csv(raw / "train.csv", index=False)
    pd.DataFrame({"text": [1, 2], "label": [0.5, 1.5]}).to_parquet(raw / "test.parquet")

    with pytest.raises(DataValidationError) as failure:
        aggregate(raw, tmp_path / "out", None)

    message = str(failure.value)
    assert "train.csv: missing column(s) ['text']" in message
    assert "test.parquet: column 'text' must hold strings, not int64" in message
    assert "test.parquet: column 'label' has type float64" in message


def test_train_without_test_is_refused(tmp_path: Path) -> None:
    raw = sample(tmp_path, "raw")
    (raw / "test.csv").unlink()
    with pytest.raises(DataValidationError, match="train files but no test file"):
        aggregate(raw, tmp_path / "out", None)


def test_a_pool_is_validated_then_split_stratified(tmp_path: Path) -> None:
    raw = sample(tmp_path, "raw")
    (raw / "train.csv").rename(raw / "messages-2024.csv")
    (raw / "test.csv").rename(raw / "messages-2025.csv")
    params = recipe.parse_params({"test_fraction": 0.25})
    summary = recipe.aggregate(raw, tmp_path / "dataset", params, context(None))
    split = recipe.split(tmp_path / "dataset", tmp_path / "split", params, context(None))

    assert set(summary.details["sets"]) == {"all", "all_subset"}
    assert split.details["strategy"] == "stratified random"
    assert split.details["test_rows"] == pytest.approx(0.25 * summary.rows, abs=2)
    train, test = split.details["labels"]["train"], split.details["labels"]["test"]
    for label in train:
        assert test[label] / (train[label] + test[label]) == pytest.approx(0.25, abs=0.02)


def test_write_baseline_profiles_the_train_set(baseline: Path) -> None:
    profile = BaselineProfile.model_validate_json(baseline.read_text())

    assert profile.labels == ["account", "billing", "delivery", "technical"]
    assert profile.rows == 800
    assert sum(profile.class_balance.values()) == pytest.approx(1.0)
    assert 50 < profile.mean_text_length < 200 and 3 < profile.mean_word_length < 7
    assert "refund" in profile.vocabulary
    assert profile.tolerances.class_balance_max_diff == 0.10


def test_a_malformed_baseline_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text(json.dumps({"labels": [], "rows": 1}))
    with pytest.raises(DataValidationError) as failure:
        aggregate(sample(tmp_path, "raw"), tmp_path / "out", bad)
    assert "baselines/text/baseline.json: invalid baseline profile" in str(failure.value)
    assert "labels" in str(failure.value)


# --- training ----------------------------------------------------------------------------


def test_zoo_and_trials_are_child_runs_with_metrics_and_artifacts(trained: Trained) -> None:
    children = trained.result.children
    zoo = [c for c in children if c.tags["kind"] == "zoo"]
    trials = [c for c in children if c.tags["kind"] == "trial"]

    assert [c.name for c in zoo] == ["zoo/complement_nb", "zoo/ridge", "zoo/knn"]
    assert len(trials) == 3 and {t.tags["model"] for t in trials} <= {"complement_nb", "ridge"}
    assert all(0.5 < c.metrics["f1_macro"] <= 1.0 for c in zoo + trials)
    assert all(c.artifacts and c.artifacts[0].exists() for c in zoo)
    with open(zoo[0].artifacts[0], "rb") as file:
        pickled = pickle.load(file)
    assert pickled.predict(
        ["REFUND the double charge!!", "The APP crashes in the settings page http://x.y"]
    ).tolist() == [
        "billing",
        "technical",
    ], "a zoo model takes raw text"
    table = pd.read_csv(trained.out_dir / "tuning_trials.csv")
    assert len(table) == 3 and "f1_macro" in table.columns


def test_the_final_model_is_evaluated_and_exported_to_onnx(trained: Trained) -> None:
    result = trained.result
    assert result.flavor == "onnx"
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"):
        assert 0.8 < result.metrics[name] <= 1.0, name
    assert result.metrics["onnx_agreement"] >= 0.995
    assert result.params["model"] in {"complement_nb", "ridge"}, "knn is never exported"
    names = {path.name for path in result.artifacts}
    assert {"confusion_matrix.png", "classification_report.json", "tuning_trials.csv"} <= names
    report = json.loads((trained.out_dir / "classification_report.json").read_text())
    assert set(report) >= {"billing", "delivery", "technical", "account", "macro avg"}


def test_onnx_and_scikit_learn_agree_on_the_test_set(trained: Trained) -> None:
    test = pd.read_parquet(trained.split_dir / "test.parquet")
    with open(trained.out_dir / "sklearn_pipeline.pkl", "rb") as file:
        pipeline = pickle.load(file)

    expected = pipeline.predict(test["text"])
    got = predict(session(trained.result.model), test["text"])

    assert np.mean(got == expected) >= 0.995
    rebuilt = predict(session(to_onnx(pipeline)), test["text"])
    assert (rebuilt == got).all()


def test_a_cancelled_run_stops_training(tmp_path: Path, trained: Trained) -> None:
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(StageCancelledError):
        recipe.train(
            trained.split_dir,
            tmp_path,
            recipe.parse_params(TINY),
            RecipeContext(cancelled=cancelled, max_workers=1),
        )


def test_params_refuse_a_zoo_with_nothing_to_export() -> None:
    with pytest.raises(ValueError, match="can become the final one"):
        recipe.parse_params({"zoo": ["knn", "nearest_centroid"]})
    with pytest.raises(ValueError, match="must not repeat"):
        recipe.parse_params({"zoo": ["ridge", "ridge"]})
