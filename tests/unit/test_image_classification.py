"""The image classification recipe: aggregate/split validation, a tiny MobileNet end to end
(random weights, 32 px, alpha 0.25, 1 epoch: behaviour, not accuracy) and the MLflow round trip.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from PIL import Image

from recipes.base import DatasetSummary, Recipe
from recipes.image_classification import ImageClassificationParams, build_model, recipe
from recipes.image_classification.dataset import read_examples
from recipes.image_classification.sample_data import IMAGES_PER_LABEL, LABELS, main
from recipes.image_classification.training import (
    describe_device,
    resolve_weights,
    weights_file_name,
)
from shared.errors import ConfigurationError, DataValidationError
from tests.recipe_fixtures import Trained, train_on_sample

# Keras 3.15 converts tensors with np.array(x), which numpy 2.4 reports on every call.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SIZE = 32
TINY = {"weights": "none", "image_size": SIZE, "alpha": 0.25, "epochs": 1, "batch_size": 16}
PARAMS = ImageClassificationParams(**TINY)  # type: ignore[arg-type]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("image_classification")
    return train_on_sample(recipe, root, seed=0, params=TINY)


def _png(colour: tuple[int, ...] = (200, 30, 30), mode: str = "RGB", size: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(colour: tuple[int, int, int] = (30, 30, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _raw(tmp_path: Path, files: dict[str, bytes | None]) -> Path:
    """Writes ``files`` under tmp_path/raw; ``None`` makes an (empty) folder."""
    raw = tmp_path / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = raw / name
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return raw


def _aggregate(tmp_path: Path, files: dict[str, bytes | None]) -> DatasetSummary:
    return recipe.aggregate(_raw(tmp_path, files), tmp_path / "dataset", PARAMS)


def _invalid(tmp_path: Path, files: dict[str, bytes | None]) -> DataValidationError:
    with pytest.raises(DataValidationError) as caught:
        _aggregate(tmp_path, files)
    return caught.value


TWO_LABELS: dict[str, bytes | None] = {"cat/a.png": _png(), "dog/b.jpg": _jpeg()}


# --- the recipe object -------------------------------------------------------------------------


def test_recipe_declares_the_contract() -> None:
    assert isinstance(recipe, Recipe)
    assert recipe.name == "image_classification"
    assert recipe.compute == "gpu"
    assert recipe.primary_metric == "f1_macro" and recipe.greater_is_better
    assert recipe.quality_gate.failures({"f1_macro": 0.9}) == []
    assert recipe.quality_gate.failures({"f1_macro": 0.2})
    requirements = dict(r.split("==") for r in recipe.pip_requirements)
    # The model loads with the full "tensorflow" build (CPU or GPU), pinned to the training one.
    assert set(requirements) == {"tensorflow", "keras", "numpy"}
    assert all(requirements.values())


def test_importing_the_recipe_does_not_import_tensorflow_or_pillow() -> None:
    code = (
        "import sys, recipes.image_classification\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'PIL', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_params_defaults_and_validation() -> None:
    defaults = recipe.parse_params({})
    assert isinstance(defaults, ImageClassificationParams)
    assert (defaults.weights, defaults.image_size, defaults.alpha) == ("imagenet", 224, 1.0)
    assert (defaults.epochs, defaults.trainable_base) == (4, False)
    assert recipe.parse_params({"weights": "none", "alpha": 0.3}).alpha == 0.3  # type: ignore[attr-defined]
    for bad in (
        {"alpha": 0.3},  # no ImageNet weights for that width
        {"image_size": 16},
        {"epochs": 0},
        {"validation_fraction": 1.0},
        {"weights": "random"},
        {"seed": -1},
        {"learning_rat": 0.1},
    ):
        with pytest.raises(pydantic.ValidationError):
            recipe.parse_params(bad)


def test_weights_file_names_follow_keras() -> None:
    def name(**overrides: Any) -> str:
        return weights_file_name(ImageClassificationParams(**overrides))

    assert name() == "mobilenet_1_0_224_tf_no_top.h5"
    assert name(image_size=128, alpha=0.5) == "mobilenet_5_0_128_tf_no_top.h5"
    # Sizes without their own weights use the 224 ones, like keras.applications.MobileNet.
    assert name(image_size=96, alpha=0.25) == "mobilenet_2_5_224_tf_no_top.h5"


# --- sample data ---------------------------------------------------------------------------------


def test_sample_data_is_deterministic(tmp_path: Path) -> None:
    def contents(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.*")}

    recipe.write_sample_data(tmp_path / "a", 3)
    recipe.write_sample_data(tmp_path / "b", 3)
    recipe.write_sample_data(tmp_path / "c", 4)
    first = contents(tmp_path / "a")
    assert first == contents(tmp_path / "b")
    assert first != contents(tmp_path / "c")
    assert len(first) == len(LABELS) * IMAGES_PER_LABEL
    assert {name.split("/")[0] for name in first} == set(LABELS)
    assert {Path(name).suffix for name in first} == {".png", ".jpg"}


def test_sample_data_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--seed", "1", "--per-label", "2"]) == 0
    assert len(list(tmp_path.rglob("*.*"))) == 2 * len(LABELS)
    assert "wrote 6 sample images" in capsys.readouterr().out


# --- aggregate -----------------------------------------------------------------------------------


def test_aggregate_sample_data(trained: Trained) -> None:
    summary = trained.aggregated
    assert summary.rows == len(LABELS) * IMAGES_PER_LABEL
    assert summary.details["labels"] == {label: IMAGES_PER_LABEL for label in LABELS}
    assert summary.details["ignored_files"] == 0
    assert set(summary.files) == {"labels.jsonl", "MLTable", "dataset.json"}
    examples = read_examples(trained.dataset_dir, "labels.jsonl")
    assert len(examples) == summary.rows
    for example in examples:
        assert example.path.startswith("images/") and example.path.endswith(".png")
        assert example.source is not None and example.source.startswith(f"{example.label}/")
        with Image.open(trained.dataset_dir / example.path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (SIZE, SIZE))

    yaml = pytest.importorskip("yaml")
    table = yaml.safe_load((trained.dataset_dir / "MLTable").read_text())
    assert table["type"] == "mltable"
    assert table["paths"] == [{"file": "./labels.jsonl"}]
    assert "read_json_lines" in table["transformations"][0]
    metadata = json.loads((trained.dataset_dir / "dataset.json").read_text())
    assert metadata["image_size"] == SIZE and metadata["labels"] == summary.details["labels"]


def test_aggregate_merges_group_folders_and_ignores_other_files(tmp_path: Path) -> None:
    summary = _aggregate(
        tmp_path,
        {
            "cat/a.png": _png(),
            "batch-2/cat/a.png": _png(),  # same name in another group: both kept
            "batch-2/cat/a.JPG": _jpeg(),  # same stem, other format: both kept
            "batch-2/dog/b.jpeg": _jpeg(),
            "batch-2/dog/notes.txt": b"taken on 2024-06-01",
            "README": b"labelled images",
            ".hidden/x.png": b"skipped, even though not an image",
            "batch-2/dog/.DS_Store": b"\0",
        },
    )
    assert summary.rows == 4
    assert summary.details["labels"] == {"cat": 3, "dog": 1}
    assert summary.details["ignored_files"] == 2
    assert summary.details["ignored_extensions"] == {"(no extension)": 1, ".txt": 1}
    examples = read_examples(tmp_path / "dataset", "labels.jsonl")
    assert sorted((e.source, e.path) for e in examples) == [
        # The first in path order keeps the plain name.
        ("batch-2/cat/a.JPG", "images/batch-2/cat/a.png"),
        ("batch-2/cat/a.png", "images/batch-2/cat/a-png.png"),
        ("batch-2/dog/b.jpeg", "images/batch-2/dog/b.png"),
        ("cat/a.png", "images/cat/a.png"),
    ]


def test_aggregate_converts_to_upright_rgb(tmp_path: Path) -> None:
    transparent = _png((255, 0, 0, 0), mode="RGBA")
    grey = _png((80,), mode="L")
    # A 2:1 image, left half red and right half blue, stored with EXIF "rotate 90 clockwise".
    sideways = Image.new("RGB", (64, 32), (255, 0, 0))
    sideways.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    sideways.save(buffer, format="JPEG", exif=exif, quality=95)
    _aggregate(
        tmp_path,
        {"a/transparent.png": transparent, "a/grey.png": grey, "b/up.jpg": buffer.getvalue()},
    )
    images = tmp_path / "dataset" / "images"
    assert np.asarray(Image.open(images / "a/transparent.png")).min() == 255  # on white
    grey_pixels = np.asarray(Image.open(images / "a/grey.png"))
    assert grey_pixels.shape == (SIZE, SIZE, 3) and np.all(grey_pixels == 80)
    upright = np.asarray(Image.open(images / "b/up.png")).astype(int)
    top, bottom = upright[2, SIZE // 2], upright[-3, SIZE // 2]
    assert top[0] > 200 and top[2] < 60  # red on top after the rotation
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("files", "bad_file", "message"),
    [
        ({"cat/broken.jpg": b"not an image at all"}, "cat/broken.jpg", "unreadable image"),
        ({"cat/truncated.png": _png(size=200)[:60]}, "cat/truncated.png", "unreadable image"),
        ({"loose.png": _png()}, "loose.png", "not in a label folder"),
        ({"a/b/cat/deep.png": _png()}, "a/b/cat/deep.png", "nested too deeply"),
        ({"bird": None}, "bird/", "no .jpg/.jpeg/.png image"),
        ({"bird/photo.webp": b"RIFF"}, "bird/", "unsupported format"),
        ({"cat/kitten/k.png": _png()}, "cat/", "images directly and in subfolders"),
    ],
    ids=["corrupt", "truncated", "at-root", "too-deep", "empty", "only-webp", "mixed"],
)
def test_aggregate_errors_name_the_file(
    tmp_path: Path, files: dict[str, bytes | None], bad_file: str, message: str
) -> None:
    error = _invalid(tmp_path, {**TWO_LABELS, **files})
    assert error.file == bad_file
    assert str(error).startswith(f"{bad_file}: ")
    assert message in str(error)


def test_aggregate_needs_two_labels_and_some_images(tmp_path: Path) -> None:
    error = _invalid(tmp_path / "one", {"cat/a.png": _png(), "cat/b.png": _png()})
    assert "at least 2 labels" in str(error) and "'cat'" in str(error)
    error = _invalid(tmp_path / "none", {"notes.txt": b"x"})
    assert "no .jpg/.jpeg/.png images" in str(error)


# --- split ---------------------------------------------------------------------------------------


def test_split_is_stratified_and_deterministic(trained: Trained, tmp_path: Path) -> None:
    train = read_examples(trained.split_dir, "train.jsonl")
    validation = read_examples(trained.split_dir, "validation.jsonl")
    assert len(train) + len(validation) == trained.aggregated.rows
    assert not {e.path for e in train} & {e.path for e in validation}
    per_label_validation = round(IMAGES_PER_LABEL * PARAMS.validation_fraction)
    assert trained.split.details["labels"]["validation"] == {
        label: per_label_validation for label in LABELS
    }
    assert trained.split.details["train_rows"] == len(train)

    again = recipe.split(trained.dataset_dir, tmp_path / "again", PARAMS)
    assert again == trained.split
    assert (tmp_path / "again" / "validation.jsonl").read_bytes() == (
        trained.split_dir / "validation.jsonl"
    ).read_bytes()
    other_seed = PARAMS.model_copy(update={"seed": 1})
    recipe.split(trained.dataset_dir, tmp_path / "other", other_seed)
    assert (tmp_path / "other" / "validation.jsonl").read_bytes() != (
        trained.split_dir / "validation.jsonl"
    ).read_bytes()


def test_split_folder_is_self_contained(trained: Trained, tmp_path: Path) -> None:
    dataset = tmp_path / "dataset"
    shutil.copytree(trained.dataset_dir, dataset)
    recipe.split(dataset, tmp_path / "split", PARAMS)
    shutil.rmtree(dataset)
    for name in ("train.jsonl", "validation.jsonl"):
        for example in read_examples(tmp_path / "split", name):  # checks every file exists
            with Image.open(tmp_path / "split" / example.path) as image:
                assert image.size == (SIZE, SIZE)
    metadata = json.loads((tmp_path / "split" / "dataset.json").read_text())
    assert metadata["image_size"] == SIZE and metadata["split"]["seed"] == PARAMS.seed


def test_split_needs_two_images_per_label(tmp_path: Path) -> None:
    _aggregate(tmp_path, {**TWO_LABELS, "dog/c.png": _png()})
    with pytest.raises(DataValidationError, match=r"labels\.jsonl: label 'cat' has 1 image"):
        recipe.split(tmp_path / "dataset", tmp_path / "split", PARAMS)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not a JSON object"),
        ('{"path": "../outside.png", "label": "cat"}', "without '..'"),
        ('{"path": "images/cat/a.png"}', "'label' must be a non-empty string"),
        ('{"path": "images/cat/missing.png", "label": "cat"}', "is missing from the data set"),
    ],
)
def test_split_rejects_bad_index_lines_naming_the_row(
    tmp_path: Path, line: str, message: str
) -> None:
    _aggregate(tmp_path, TWO_LABELS)
    index = tmp_path / "dataset" / "labels.jsonl"
    index.write_text(index.read_text() + "\n" + line + "\n")  # after a blank line: row 4
    with pytest.raises(DataValidationError) as caught:
        recipe.split(tmp_path / "dataset", tmp_path / "split", PARAMS)
    assert (caught.value.file, caught.value.row) == ("labels.jsonl", 4)
    assert message in str(caught.value)


# --- train ---------------------------------------------------------------------------------------


def test_train_reports_metrics_and_artifacts(trained: Trained) -> None:
    import tensorflow as tf

    result = trained.result
    assert result.flavor == "tensorflow"
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert 0.0 <= result.metrics[name] <= 1.0, name
    assert result.metrics["validation_loss"] > 0
    assert result.params["classes"] == sorted(LABELS)
    assert result.params["device"] == describe_device(tf)
    assert result.params["weights_file"] == "none"

    names = {path.name: path for path in result.artifacts}
    assert set(names) == {
        "confusion_matrix.png",
        "per_class_metrics.json",
        "labels.json",
        "history.json",
    }
    assert all(path.parent == trained.out_dir and path.is_file() for path in result.artifacts)
    png = names["confusion_matrix.png"].read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    per_class = json.loads(names["per_class_metrics.json"].read_text())
    assert set(per_class) == set(LABELS)
    assert sum(c["support"] for c in per_class.values()) == result.params["validation_images"]
    labels = json.loads(names["labels.json"].read_text())
    assert labels["classes"] == sorted(LABELS) and labels["image_size"] == SIZE
    assert len(json.loads(names["history.json"].read_text())["loss"]) == PARAMS.epochs
    assert result.log_model_options["metadata"]["classes"] == sorted(LABELS)


def test_model_takes_raw_pixels_and_returns_probabilities(trained: Trained) -> None:
    model = trained.result.model
    example = trained.result.input_example
    assert example.shape == (1, SIZE, SIZE, 3) and example.dtype == np.float32
    assert example.max() > 1.0  # raw 0..255 pixels, not preprocessed
    preprocess = model.get_layer("preprocess")
    assert (preprocess.scale, preprocess.offset) == (pytest.approx(1 / 127.5), -1.0)
    batch = np.random.default_rng(0).uniform(0, 255, (5, SIZE, SIZE, 3)).astype("float32")
    probabilities = model.predict(batch, verbose=0)
    assert probabilities.shape == (5, len(LABELS))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert not model.compiled  # registered without optimizer state


def test_frozen_base_trains_only_the_head(trained: Trained) -> None:
    n_features = int(1024 * PARAMS.alpha)
    head = n_features * len(LABELS) + len(LABELS)
    assert trained.result.params["trainable_parameters"] == head
    assert trained.result.params["total_parameters"] > 100 * head


def test_fine_tuning_trains_the_base_too(trained: Trained, tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"trainable_base": True})
    result = recipe.train(trained.split_dir, tmp_path, params)
    assert (
        result.params["trainable_parameters"] > 10 * trained.result.params["trainable_parameters"]
    )
    assert 0.0 <= result.metrics["f1_macro"] <= 1.0


def test_train_needs_the_split_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"train\.jsonl"):
        recipe.train(tmp_path, tmp_path / "out", PARAMS)


def test_imagenet_weights_unavailable_offline_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import keras

    def offline(fname: str, origin: str, **kwargs: Any) -> str:
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    params = ImageClassificationParams(image_size=SIZE, alpha=0.25)
    assert resolve_weights(params.model_copy(update={"weights": "none"})) is None
    with pytest.raises(ConfigurationError) as caught:
        resolve_weights(params)
    message = str(caught.value)
    assert "mobilenet_2_5_224_tf_no_top.h5" in message
    assert "~/.keras/models" in message and "weights='none'" in message


def test_cached_imagenet_weights_are_loaded_and_batch_norm_stays_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    params = ImageClassificationParams(image_size=SIZE, alpha=0.25, trainable_base=True)
    donor, _, _ = build_model(2, params.model_copy(update={"weights": "none"}))
    donor_base = donor.get_layer(index=2)
    weights = tmp_path / "pretrained.weights.h5"
    donor_base.save_weights(weights)
    requested = []

    def cached(fname: str, origin: str, **kwargs: Any) -> str:
        requested.append((fname, origin, kwargs))
        return str(weights)

    monkeypatch.setattr(keras.utils, "get_file", cached)
    model, _, _ = build_model(2, params, resolve_weights(params))
    assert requested == [
        (
            "mobilenet_2_5_224_tf_no_top.h5",
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
            "mobilenet_2_5_224_tf_no_top.h5",
            {"cache_subdir": "models"},
        )
    ]
    base = model.get_layer(index=2)
    for loaded, original in zip(base.get_weights(), donor_base.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, original)
    batch_norms = [
        layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms and not any(layer.trainable for layer in batch_norms)
    assert any(layer.trainable for layer in base.layers if layer.weights)


# --- MLflow --------------------------------------------------------------------------------------


def test_mlflow_round_trip(trained: Trained, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from shared.tracking import MlflowRegistry

    registry = MlflowRegistry(f"sqlite:///{tmp_path}/mlflow.db", artifact_root=tmp_path / "art")
    try:
        started = time.perf_counter()
        record = registry.log_training(
            experiment_name="image-classification",
            correlation_id="run-1",
            result=trained.result,
            pip_requirements=recipe.pip_requirements,
            tags={"recipe": recipe.name},
        )
        logged_s = time.perf_counter() - started
        print(f"log_training (tensorflow flavor, {SIZE} px alpha 0.25): {logged_s:.2f} s")
        run = mlflow.get_run(record.run_id)
        assert run.data.params["device"] == trained.result.params["device"]
        assert run.data.metrics["f1_macro"] == pytest.approx(trained.result.metrics["f1_macro"])
        logged = {a.path for a in mlflow.MlflowClient().list_artifacts(record.run_id)}
        assert {"confusion_matrix.png", "labels.json", "per_class_metrics.json"} <= logged

        loaded = mlflow.pyfunc.load_model(record.model_uri)
        assert loaded.metadata.metadata["classes"] == sorted(LABELS)
        assert loaded.metadata.metadata["image_size"] == SIZE
        batch = np.random.default_rng(1).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
        predicted = np.asarray(loaded.predict(batch))
        assert predicted.shape == (4, len(LABELS))
        np.testing.assert_allclose(
            predicted, trained.result.model.predict(batch, verbose=0), rtol=1e-5, atol=1e-6
        )
        model_dir = Path(mlflow.artifacts.download_artifacts(record.model_uri))
        requirements = (model_dir / "requirements.txt").read_text().splitlines()
        assert set(recipe.pip_requirements) <= set(requirements)
    finally:
        mlflow.set_tracking_uri(None)
