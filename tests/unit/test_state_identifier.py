from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import Pipeline

from recipes.base import DatasetSummary, Recipe
from recipes.state_identifier import StateIdentifierParams, recipe
from recipes.state_identifier.metrics import dunn_index, silhouette
from recipes.state_identifier.sample_data import (
    MISSING_FRACTION,
    SENSORS,
    STATES,
    generate,
    main,
    true_window_states,
)
from recipes.state_identifier.transformers import (
    ColumnSelector,
    ColumnSummariser,
    FillMissing,
    Windower,
    WindowFeatures,
    count_windows,
)
from shared.errors import DataValidationError
from tests.recipe_fixtures import Trained, train_on_sample

SEED = 0
PARAMS = StateIdentifierParams()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("state_identifier")
    return train_on_sample(recipe, root, seed=SEED, params={})


def _aggregate_files(tmp_path: Path, files: dict[str, str | bytes]) -> DatasetSummary:
    raw = tmp_path / "raw"
    for name, content in files.items():
        path = raw / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    raw.mkdir(exist_ok=True)
    return recipe.aggregate(raw, tmp_path / "out", PARAMS)


GOOD = "timestamp,a,b\n2024-01-01T00:00:00Z,1.0,2.0\n2024-01-01T00:00:01Z,,3.0\n"


# --- the recipe object -------------------------------------------------------------------------


def test_recipe_declares_the_contract() -> None:
    assert isinstance(recipe, Recipe)
    assert recipe.name == "state_identifier"
    assert recipe.primary_metric == "silhouette"
    assert recipe.greater_is_better is True
    assert recipe.compute == "cpu"
    assert recipe.quality_gate.failures({"silhouette": 0.05}) != []
    assert recipe.quality_gate.failures({"silhouette": 0.6}) == []
    pinned = dict(r.split("==") for r in recipe.pip_requirements)
    for name in ("scikit-learn", "pandas", "numpy", "scipy"):
        assert pinned[name] == metadata.version(name)


def test_params_defaults_and_validation() -> None:
    params = recipe.parse_params({})
    assert isinstance(params, StateIdentifierParams)
    assert params.n_clusters == 3
    stepped = recipe.parse_params({"n_clusters": 4, "window_size": 10, "step": 5})
    assert isinstance(stepped, StateIdentifierParams) and stepped.step == 5
    for bad in ({"n_clusters": 1}, {"window_size": 1}, {"unknown": 1}, {"features": ["median"]}):
        with pytest.raises(pydantic.ValidationError):
            recipe.parse_params(bad)
    with pytest.raises(pydantic.ValidationError, match="must not repeat"):
        recipe.parse_params({"features": ["mean", "mean"]})


# --- sample data -------------------------------------------------------------------------------


def test_sample_data_is_deterministic_and_realistic(tmp_path: Path) -> None:
    recipe.write_sample_data(tmp_path / "a", 3)
    recipe.write_sample_data(tmp_path / "b", 3)
    recipe.write_sample_data(tmp_path / "c", 4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.csv"))
    assert len(files) == 3
    assert all(len(f.parts) == 2 for f in files)  # in a subfolder
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / files[0]).read_bytes() != (tmp_path / "c" / files[0]).read_bytes()

    sample = generate(3)
    assert list(sample.frame.columns) == ["timestamp", *SENSORS]
    missing = sample.frame[list(SENSORS)].isna().to_numpy().mean()
    assert 0.02 <= missing <= 0.05
    assert missing >= MISSING_FRACTION
    assert set(sample.states) == set(STATES)
    assert len(sample.states) == len(sample.frame)


def test_sample_data_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "cli"), "--seed", "5"]) == 0
    assert len(list((tmp_path / "cli").rglob("*.csv"))) == 3
    assert "cli" in capsys.readouterr().out


def test_true_window_states_takes_the_majority() -> None:
    states = ["idle"] * 4 + ["ramp"] * 6
    assert list(true_window_states(states, window_size=5, step=5)) == ["idle", "ramp"]
    assert list(true_window_states(states, window_size=3, step=4)) == ["idle", "ramp"]


# --- aggregation -------------------------------------------------------------------------------


def test_aggregate_sample_data(trained: Trained) -> None:
    summary = trained.aggregated
    assert summary.rows == 3600
    assert summary.files == [
        "machine-01/2024-05-01T00.csv",
        "machine-01/2024-05-01T01.csv",
        "machine-01/2024-05-01T02.csv",
    ]
    assert summary.details["sensor_columns"] == list(SENSORS)
    assert summary.details["missing_cells"] > 0
    data = pd.read_csv(trained.dataset_dir / "timeseries.csv")
    assert list(data.columns) == ["timestamp", *SENSORS]
    timestamps = pd.to_datetime(data["timestamp"], format="ISO8601", utc=True)
    assert timestamps.is_monotonic_increasing and timestamps.is_unique
    assert data["timestamp"].iloc[0] == "2024-05-01T00:00:00Z"
    assert data[list(SENSORS)].isna().sum().sum() == summary.details["missing_cells"]
    profile = json.loads((trained.dataset_dir / "profile.json").read_text())
    assert profile["rows"] == 3600
    assert profile["median_interval_s"] == 3.0


def test_aggregate_sorts_reorders_columns_and_drops_repeated_timestamps(tmp_path: Path) -> None:
    summary = _aggregate_files(
        tmp_path,
        {
            "late.csv": "b,timestamp,a\n5,2024-01-01T00:00:03Z,4\n",
            "sub/early.csv": GOOD,
            "sub/again.csv": GOOD,  # an overlapping export: same rows once more
            "sub/conflict.csv": "timestamp,a,b\n2024-01-01T00:00:00+00:00,9,9\n",
            "notes.txt": "not data",
            ".ipynb_checkpoints/late-checkpoint.csv": "garbage",
            "._late.csv": b"\x00\x05\x16\x07",
        },
    )
    assert summary.rows == 3
    assert summary.details["duplicate_timestamps_dropped"] == 3
    assert summary.details["conflicting_duplicates"] == 1
    data = pd.read_csv(tmp_path / "out" / "timeseries.csv")
    # Sensor columns in the order of the first file in path order ("late.csv").
    assert list(data.columns) == ["timestamp", "b", "a"]
    assert list(data["timestamp"]) == [
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:03Z",
    ]
    # The first file in path order wins: "sub/again.csv" precedes "sub/conflict.csv".
    assert list(data["a"].fillna(-1)) == [1.0, -1.0, 4.0]


def test_aggregate_converts_offsets_to_utc(tmp_path: Path) -> None:
    _aggregate_files(tmp_path, {"x.csv": "timestamp,a\n2024-01-01T02:00:00+02:00,1\n"})
    data = pd.read_csv(tmp_path / "out" / "timeseries.csv")
    assert list(data["timestamp"]) == ["2024-01-01T00:00:00Z"]


def _validation_error(tmp_path: Path, files: dict[str, str | bytes]) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        _aggregate_files(tmp_path, files)
    return caught.value


def test_no_csv_files(tmp_path: Path) -> None:
    error = _validation_error(tmp_path, {"readme.txt": "hello"})
    assert "no CSV files" in str(error)


def test_unreadable_csv_not_utf8(tmp_path: Path) -> None:
    error = _validation_error(
        tmp_path, {"ok.csv": GOOD, "bin/blob.csv": b"timestamp,a\n\xff\xfe,1\n"}
    )
    assert error.file == "bin/blob.csv"
    assert str(error).startswith("bin/blob.csv: unreadable CSV")


def test_unreadable_csv_ragged_row(tmp_path: Path) -> None:
    error = _validation_error(tmp_path, {"x.csv": GOOD + "2024-01-01T00:00:02Z,1,2,3,4\n"})
    assert (error.file, error.row) == ("x.csv", 3)
    assert str(error).startswith("x.csv, row 3: unreadable CSV")


def test_empty_file(tmp_path: Path) -> None:
    error = _validation_error(tmp_path, {"empty.csv": ""})
    assert error.file == "empty.csv"
    assert "empty" in str(error)


def test_missing_timestamp_column(tmp_path: Path) -> None:
    error = _validation_error(tmp_path, {"a.csv": GOOD, "b.csv": "time,a,b\n1,2,3\n"})
    assert error.file == "b.csv"
    assert "missing required column 'timestamp'" in str(error)


def test_unparseable_timestamp_names_the_row(tmp_path: Path) -> None:
    text = GOOD + "yesterday noon,1,2\n2024-01-01T00:00:03Z,1,2\n"
    error = _validation_error(tmp_path, {"day/x.csv": text})
    assert (error.file, error.row) == ("day/x.csv", 3)
    assert str(error).startswith("day/x.csv, row 3: unparseable 'timestamp' value 'yesterday noon'")


def test_missing_timestamp_value_names_the_row(tmp_path: Path) -> None:
    error = _validation_error(tmp_path, {"x.csv": GOOD + ",1,2\n"})
    assert (error.file, error.row) == ("x.csv", 3)
    assert "missing 'timestamp' value" in str(error)


def test_non_numeric_value_names_row_and_column(tmp_path: Path) -> None:
    text = (
        GOOD + "2024-01-01T00:00:02Z,1,2\n2024-01-01T00:00:03Z,1,n/a?\n2024-01-01T00:00:04Z,x,2\n"
    )
    error = _validation_error(tmp_path, {"x.csv": text})
    assert (error.file, error.row) == ("x.csv", 4)
    assert str(error) == "x.csv, row 4: column 'b': 'n/a?' is not a finite number"


def test_infinite_value_is_rejected(tmp_path: Path) -> None:
    error = _validation_error(tmp_path, {"x.csv": GOOD + "2024-01-01T00:00:02Z,inf,2\n"})
    assert (error.file, error.row) == ("x.csv", 3)
    assert "column 'a'" in str(error)


def test_blank_lines_do_not_shift_row_numbers(tmp_path: Path) -> None:
    text = "timestamp,a\n2024-01-01T00:00:00Z,1\n\n2024-01-01T00:00:02Z,oops\n"
    error = _validation_error(tmp_path, {"x.csv": text})
    assert error.row == 3  # data row 3 is line 4 of the file


def test_files_with_different_sensor_columns(tmp_path: Path) -> None:
    other = "timestamp,a,c\n2024-01-01T00:00:05Z,1,2\n"
    error = _validation_error(tmp_path, {"a.csv": GOOD, "b.csv": other})
    assert error.file == "b.csv"
    assert "differ from a.csv" in str(error)
    assert "missing ['b'], unexpected ['c']" in str(error)


def test_entirely_empty_column(tmp_path: Path) -> None:
    text = "timestamp,a,b\n2024-01-01T00:00:00Z,1,\n2024-01-01T00:00:01Z,2,\n"
    error = _validation_error(tmp_path, {"x.csv": text})
    assert error.file == "x.csv"
    assert "column 'b' has no values" in str(error)


def test_column_empty_in_one_file_only_is_fine(tmp_path: Path) -> None:
    outage = "timestamp,a,b\n2024-01-01T00:00:05Z,1,\n"
    assert _aggregate_files(tmp_path, {"a.csv": GOOD, "b.csv": outage}).rows == 3


# --- split ---------------------------------------------------------------------------------------


def test_split_keeps_everything_for_training(trained: Trained) -> None:
    assert trained.split.rows == trained.aggregated.rows
    assert trained.split.files == ["train.csv"]
    assert trained.split.details["validation_rows"] == 0
    train = pd.read_csv(trained.split_dir / "train.csv")
    timeseries = pd.read_csv(trained.dataset_dir / "timeseries.csv")
    pd.testing.assert_frame_equal(train, timeseries)


# --- training ------------------------------------------------------------------------------------


def test_train_finds_the_machine_states(trained: Trained) -> None:
    result = trained.result
    assert result.flavor == "sklearn"
    assert isinstance(result.model, Pipeline)
    assert set(result.metrics) == {"silhouette", "dunn_index", "inertia"}
    assert recipe.quality_gate.failures(result.metrics) == []
    assert result.metrics["silhouette"] > 0.5
    assert result.metrics["dunn_index"] > 0
    assert result.metrics["inertia"] > 0
    assert result.params["windows"] == 120
    assert result.params["clusters_found"] == 3

    train = pd.read_csv(trained.split_dir / "train.csv")
    labels = result.model.predict(train)
    assert len(labels) == 120
    states = generate(SEED).states
    truth = true_window_states(list(states), PARAMS.window_size, PARAMS.step)
    assert adjusted_rand_score(truth, labels) > 0.8
    # Windows inside one state (not straddling a change) are all clustered right.
    pure = np.array(
        [len(set(states[i : i + PARAMS.window_size])) == 1 for i in range(0, len(states), 30)]
    )
    assert pure.sum() > 90
    assert adjusted_rand_score(truth[pure], labels[pure]) > 0.95


def test_train_writes_artifacts(trained: Trained) -> None:
    artifacts = {p.name: p for p in trained.result.artifacts}
    assert set(artifacts) == {"cluster_profile.json", "clusters.png"}
    assert all(p.parent == trained.out_dir and p.is_file() for p in artifacts.values())
    profile = json.loads(artifacts["cluster_profile.json"].read_text())
    clusters = profile["clusters"]
    assert sum(c["windows"] for c in clusters.values()) == 120
    # The hottest cluster is full load (about 78 C), the coolest idle (about 38 C).
    temperatures = sorted(c["mean"]["temperature_c"] for c in clusters.values())
    assert temperatures[0] < 45 < temperatures[1] < 70 < temperatures[2]
    assert artifacts["clusters.png"].read_bytes()[:4] == b"\x89PNG"


def test_the_cluster_plot_can_be_left_out(trained: Trained, tmp_path: Path) -> None:
    params = recipe.parse_params({"cluster_plot": False})
    result = recipe.train(trained.split_dir, tmp_path, params)
    assert [p.name for p in result.artifacts] == ["cluster_profile.json"]


def test_input_example_is_a_raw_frame_the_model_accepts(trained: Trained) -> None:
    example = trained.result.input_example
    assert isinstance(example, pd.DataFrame)
    assert list(example.columns) == list(SENSORS)
    assert len(example) >= PARAMS.window_size
    assert len(trained.result.model.predict(example)) == count_windows(len(example), 30, 30)


def test_predict_on_raw_readings_with_gaps(trained: Trained) -> None:
    model = trained.result.model
    train = pd.read_csv(trained.split_dir / "train.csv")
    trained_labels = model.predict(train)
    hour = pd.read_csv(trained.raw_dir / "machine-01" / "2024-05-01T01.csv")
    assert hour[list(SENSORS)].isna().any().all()
    labels = model.predict(hour)
    assert len(labels) == 40
    # Hour 1 is rows 1200..2399: the training windows 40..79.
    assert np.mean(labels == trained_labels[40:80]) >= 0.95
    # Column order and the timestamp column do not matter; extra columns are ignored.
    shuffled = hour[list(reversed(SENSORS))].assign(machine="m-01")
    assert list(model.predict(shuffled)) == list(labels)
    # A sensor with no reading at all in the batch is filled with its training mean.
    assert len(model.predict(hour.assign(rpm=np.nan))) == 40


def test_predict_rejects_unusable_input(trained: Trained) -> None:
    model = trained.result.model
    hour = pd.read_csv(trained.raw_dir / "machine-01" / "2024-05-01T01.csv")
    with pytest.raises(ValueError, match=r"missing sensor column\(s\) \['rpm'\]"):
        model.predict(hour.drop(columns="rpm"))
    with pytest.raises(ValueError, match="need at least window_size=30 rows"):
        model.predict(hour.iloc[:29])
    with pytest.raises(ValueError, match="'current_a' is not numeric"):
        model.predict(hour.astype({"current_a": str}).assign(current_a="high"))


def test_train_needs_more_windows_than_clusters(tmp_path: Path) -> None:
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    generate(0, rows=100).frame.to_csv(split_dir / "train.csv", index=False)
    with pytest.raises(DataValidationError, match="3 window"):
        recipe.train(split_dir, tmp_path / "out", PARAMS)


def test_train_without_train_csv(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"train\.csv"):
        recipe.train(tmp_path, tmp_path / "out", PARAMS)


def test_mlflow_round_trip(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        experiment_id = mlflow.create_experiment(
            "state-identifier", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment_id):
            model_info = mlflow.sklearn.log_model(
                trained.result.model,
                name="model",
                pip_requirements=list(recipe.pip_requirements),
                input_example=trained.result.input_example,
                **trained.result.log_model_options,
            )
        loaded = mlflow.pyfunc.load_model(model_info.model_uri)
        hour = pd.read_csv(trained.raw_dir / "machine-01" / "2024-05-01T02.csv")
        assert hour[list(SENSORS)].isna().any().all()
        predicted = np.asarray(loaded.predict(hour))
        assert predicted.shape == (40,)
        assert list(predicted) == list(trained.result.model.predict(hour))
    finally:
        mlflow.set_tracking_uri(None)


# --- building blocks -----------------------------------------------------------------------------


def test_fill_missing_methods() -> None:
    frame = pd.DataFrame({"a": [np.nan, 1.0, np.nan, 3.0, np.nan], "b": [np.nan] * 5})
    fitted = {
        method: FillMissing(method).fit(pd.DataFrame({"a": [1.0, 3.0], "b": [10.0, 20.0]}))
        for method in ("interpolate", "ffill", "bfill")
    }
    assert list(fitted["interpolate"].transform(frame)["a"]) == [1.0, 1.0, 2.0, 3.0, 3.0]
    assert list(fitted["ffill"].transform(frame)["a"]) == [1.0, 1.0, 1.0, 3.0, 3.0]
    assert list(fitted["bfill"].transform(frame)["a"]) == [1.0, 1.0, 3.0, 3.0, 3.0]
    assert list(fitted["interpolate"].transform(frame)["b"]) == [15.0] * 5


def test_column_summariser_drops_constant_and_duplicate_columns() -> None:
    frame = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0], "const": [5.0] * 3, "a_copy": [1.0, 2.0, 3.0], "b": [3.0, 1.0, 2.0]}
    )
    step = ColumnSummariser().fit(frame)
    assert step.kept_columns_ == ["a", "b"]
    assert step.dropped_columns_ == {"const": "constant", "a_copy": "duplicate of a"}
    out = step.transform(frame)
    assert list(out.columns) == ["a", "b", "row_mean", "row_std"]
    # Row 0: a is 1.22 std below its mean, b 1.22 above: they cancel out.
    assert out["row_mean"].iloc[0] == pytest.approx(0.0)
    assert out["row_std"].iloc[0] == pytest.approx(np.sqrt(1.5))
    plain = ColumnSummariser(drop_constant=False, row_summaries=False).fit(frame)
    assert list(plain.transform(frame).columns) == ["a", "const", "b"]


def test_column_selector_drops_timestamp_and_keeps_fit_order() -> None:
    frame = pd.DataFrame({"timestamp": ["t0", "t1"], "a": [1, 2], "b": [3.0, 4.0]})
    step = ColumnSelector().fit(frame)
    assert step.columns_ == ["a", "b"]
    out = step.transform(frame[["b", "a"]])
    assert list(out.columns) == ["a", "b"]
    assert out.dtypes.tolist() == [np.float64, np.float64]
    with pytest.raises(ValueError, match="no sensor columns"):
        ColumnSelector().fit(frame[["timestamp"]])


def test_windows_and_window_features() -> None:
    assert count_windows(10, 4, 2) == 4
    assert count_windows(3, 4, 1) == 0
    rows = np.column_stack([np.arange(10.0), 2.0 * np.arange(10.0)])
    windows = Windower(window_size=4, step=3).fit(rows).transform(rows)
    assert windows.shape == (3, 4, 2)
    assert list(windows[1, :, 0]) == [3.0, 4.0, 5.0, 6.0]
    features = WindowFeatures(("mean", "slope", "range", "last")).fit(windows).transform(windows)
    assert features.shape == (3, 8)
    assert list(features[0]) == pytest.approx([1.5, 3.0, 1.0, 2.0, 3.0, 6.0, 3.0, 6.0])
    assert WindowFeatures(("mean", "slope")).feature_names(["a", "b"]) == [
        "a__mean",
        "b__mean",
        "a__slope",
        "b__slope",
    ]


def test_dunn_index() -> None:
    points = np.array([[0.0], [1.0], [5.0], [6.0], [6.5]])
    labels = np.array([0, 0, 1, 1, 1])
    # Closest pair across clusters: 1 -> 5 (4.0); widest cluster: 5 .. 6.5 (1.5).
    assert dunn_index(points, labels) == pytest.approx(4.0 / 1.5)
    assert dunn_index(points, np.array([0, 1, 2, 3, 4])) == float("inf")
    with pytest.raises(ValueError, match="two clusters"):
        dunn_index(points, np.zeros(5))


def test_metrics_sample_large_inputs() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (3000, 2)), rng.normal(20, 1, (3000, 2))])
    labels = np.repeat([0, 1], 3000)
    sampled = dunn_index(points, labels, max_rows=500, random_state=1)
    assert sampled == dunn_index(points, labels, max_rows=500, random_state=1)
    assert 1.0 < sampled < 5.0
    assert silhouette(points, labels, max_rows=500) > 0.8
