"""symbol_detection aggregation (AutoML JSONL + MLTable, validation rules) and split (params)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipes.symbol_detection.aggregate import aggregate
from recipes.symbol_detection.dataset import Box, ImageLabels, parse_line, read_annotations
from recipes.symbol_detection.params import SymbolDetectionParams
from recipes.symbol_detection.sample_data import CLASSES, write_sample_data
from recipes.symbol_detection.split import split, strata_of
from shared.errors import DataValidationError


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    write_sample_data(folder, 5, images=30)
    return folder


def copy_of(raw: Path, tmp_path: Path) -> Path:
    target = tmp_path / "raw"
    shutil.copytree(raw, target)
    return target


def test_aggregation_writes_the_automl_schema_with_relative_urls(raw: Path, tmp_path: Path) -> None:
    summary = aggregate(raw, tmp_path / "ds", SymbolDetectionParams())
    out = tmp_path / "ds"
    assert summary.rows == 30 and summary.details["image_url"] == "relative"
    assert summary.details["classes"] == list(CLASSES) and summary.details["dropped"] == {}
    assert summary.history_record is not None and summary.history_record["images"] == 30
    lines = read_annotations(out / "annotations.jsonl")
    assert [item.image_url for item in lines[:2]] == [
        "images/drawing-0000.jpg",
        "images/drawing-0001.jpg",
    ]
    first = json.loads((out / "annotations.jsonl").read_text().splitlines()[0])
    assert set(first) == {"image_url", "image_details", "label"}
    assert first["image_details"]["format"] == "jpg" and first["image_details"]["width"].endswith(
        "px"
    )
    assert all(
        0 <= b[k] <= 1 for b in first["label"] for k in ("topX", "topY", "bottomX", "bottomY")
    )
    assert (out / "images" / "drawing-0029.jpg").is_file()
    table = yaml.safe_load((out / "MLTable").read_text())
    assert table["paths"] == [{"file": "annotations.jsonl"}]
    steps = table["transformations"]
    assert steps[0]["read_json_lines"]["invalid_lines"] == "error"
    assert steps[1]["convert_column_types"] == [
        {"columns": "image_url", "column_type": "stream_info"}
    ]


def test_aggregation_with_a_datastore_writes_absolute_uris_and_no_images(
    raw: Path, tmp_path: Path
) -> None:
    short = SymbolDetectionParams(datastore="workspaceblobstore", datastore_path="/drawings/")
    aggregate(raw, tmp_path / "short", short)
    [first, *_] = read_annotations(tmp_path / "short" / "annotations.jsonl")
    assert first.image_url == (
        "azureml://datastores/workspaceblobstore/paths/drawings/images/drawing-0000.jpg"
    )
    assert not (tmp_path / "short" / "images").exists()
    long = short.model_copy(
        update={"workspace": "subscriptions/s-1/resourcegroups/rg/workspaces/ws"}
    )
    aggregate(raw, tmp_path / "long", long)
    [first, *_] = read_annotations(tmp_path / "long" / "annotations.jsonl")
    assert first.image_url.startswith(
        "azureml://subscriptions/s-1/resourcegroups/rg/workspaces/ws/datastores/"
        "workspaceblobstore/paths/drawings/images/"
    )


def add_stray_label(folder: Path) -> None:
    text = (folder / "labels/drawing-0001.jsonl").read_text()
    (folder / "labels/ghost.jsonl").write_text(text.replace("drawing-0001", "ghost"))


def write_label(folder: Path, name: str, boxes: list[Box]) -> None:
    item = ImageLabels(f"{name}.jpg", "jpg", 10, 10, tuple(boxes))
    (folder / "labels" / f"{name}.jsonl").write_text(item.line() + "\n")


@pytest.mark.parametrize(
    ("damage", "rule"),
    [
        (
            add_stray_label,
            "label_without_image",
        ),
        (lambda d: (d / "labels/drawing-0002.jsonl").unlink(), "image_without_label"),
        (
            lambda d: write_label(d, "drawing-0003", [Box("valve", 0.5, 0.5, 1.2, 0.9)]),
            "box_outside_unit_square",
        ),
        (
            lambda d: write_label(d, "drawing-0003", [Box("valve", 0.5, 0.5, 0.5, 0.9)]),
            "box_zero_area",
        ),
        (
            lambda d: write_label(d, "drawing-0003", [Box("gasket", 0.1, 0.1, 0.2, 0.2)]),
            "unknown_class",
        ),
        (lambda d: (d / "labels/drawing-0004.jsonl").write_text("{not json\n"), "unreadable_label"),
    ],
)
def test_each_validation_rule_is_an_error_or_a_counted_warning(
    raw: Path, tmp_path: Path, damage: object, rule: str
) -> None:
    data = copy_of(raw, tmp_path)
    damage(data)  # type: ignore[operator]
    with pytest.raises(DataValidationError, match=rule):
        aggregate(data, tmp_path / "error", SymbolDetectionParams())
    summary = aggregate(data, tmp_path / "warn", SymbolDetectionParams(on_invalid="warn"))
    # An unreadable label leaves its image without one.
    also = {"image_without_label": 1} if rule == "unreadable_label" else {}
    assert summary.details["dropped"] == {rule: 1, **also}
    report = json.loads((tmp_path / "warn" / "validation.json").read_text())
    assert report["counts"] == {rule: 1, **also} and len(report[rule]) == 1
    if rule in ("image_without_label", "unreadable_label"):
        assert summary.rows == 29  # the image is dropped
    else:
        assert summary.rows == 30  # the box (or the stray label) is dropped


def test_known_classes_come_from_the_param_then_classes_txt(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="unknown_class"):
        aggregate(raw, tmp_path / "a", SymbolDetectionParams(classes=("valve", "pump")))
    data = copy_of(raw, tmp_path)
    (data / "labels" / "classes.txt").unlink()
    write_label(data, "drawing-0003", [Box("gasket", 0.1, 0.1, 0.2, 0.2)])
    summary = aggregate(data, tmp_path / "b", SymbolDetectionParams())
    assert "gasket" in summary.details["classes"]  # every class seen is known
    shutil.rmtree(data / "labels")
    with pytest.raises(DataValidationError, match="no labels/ folder"):
        aggregate(data, tmp_path / "c", SymbolDetectionParams())


def test_parse_line_refuses_what_automl_would(tmp_path: Path) -> None:
    good = ImageLabels("a.jpg", "jpg", 4, 3, (Box("v", 0, 0, 1, 1),)).line()
    assert parse_line(good).width == 4
    for bad, says in [
        ('{"image_url": 3}', "image_url"),
        ('{"image_url": "a", "image_details": {"width": "wide", "height": 1}}', "width"),
        ('{"image_url": "a", "image_details": {"width": 1, "height": 1}, "label": {}}', "list"),
        (good.replace('"topX": 0', '"topX": "0"'), "topX"),
        (good.replace('"isCrowd": 0', '"isCrowd": 7'), "isCrowd"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_line(bad)


@pytest.fixture(scope="module")
def dataset(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dataset")
    aggregate(raw, folder, SymbolDetectionParams())
    return folder


def names(folder: Path) -> list[str]:
    return [item.file_name for item in read_annotations(folder / "annotations.jsonl")]


def test_stratified_split_one_fold_validates_and_mandatory_names_are_honoured(
    dataset: Path, tmp_path: Path
) -> None:
    params = SymbolDetectionParams(
        stratified_split_n_fold=5,
        mandatory_train_filenames=("drawing-0000.jpg", "drawing-0001.jpg"),
        mandatory_val_filenames=("drawing-0002.jpg", "missing.jpg"),
    )
    summary = split(dataset, tmp_path / "s", params)
    train, validation = names(tmp_path / "s/train"), names(tmp_path / "s/validation")
    assert sorted(train + validation) == sorted(names(dataset)) and not set(train) & set(validation)
    assert {"drawing-0000.jpg", "drawing-0001.jpg"} <= set(train)
    assert "drawing-0002.jpg" in validation
    assert 5 <= len(validation) <= 8  # the forced one plus a fifth of the other 27
    assert summary.details["mandatory_not_found"] == 1
    assert summary.details["validation"]["images"] == len(validation)
    for table in ("train", "validation"):
        assert yaml.safe_load((tmp_path / f"s/{table}/MLTable").read_text())["paths"] == [
            {"file": "annotations.jsonl"}
        ]
    assert len(list((tmp_path / "s/images").iterdir())) == 30
    # Seeded: the same split again; another seed, another split.
    split(dataset, tmp_path / "again", params)
    assert names(tmp_path / "again/validation") == validation
    split(dataset, tmp_path / "other", params.model_copy(update={"seed": 9}))
    assert names(tmp_path / "other/validation") != validation


def test_split_off_trains_on_everything_but_the_mandatory_validation(
    dataset: Path, tmp_path: Path
) -> None:
    split(dataset, tmp_path / "all", SymbolDetectionParams(use_stratified_split=False))
    assert len(names(tmp_path / "all/train")) == 30
    assert not (tmp_path / "all/validation").exists()
    forced = SymbolDetectionParams(
        use_stratified_split=False, mandatory_val_filenames=("drawing-0005.jpg",)
    )
    split(dataset, tmp_path / "forced", forced)
    assert names(tmp_path / "forced/validation") == ["drawing-0005.jpg"]


def test_too_few_images_for_k_folds_is_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    params = SymbolDetectionParams(
        stratified_split_n_fold=30, mandatory_val_filenames=("drawing-0002.jpg",)
    )
    with pytest.raises(DataValidationError, match="too few for a 30-fold split"):
        split(dataset, tmp_path / "s", params)
    with pytest.raises(ValueError, match="both training and validation"):
        SymbolDetectionParams(
            mandatory_train_filenames=("a.jpg",), mandatory_val_filenames=("a.jpg",)
        )


def test_strata_are_the_rarest_class_pooled_below_k() -> None:
    def image(*labels: str) -> ImageLabels:
        return ImageLabels("x.jpg", "jpg", 1, 1, tuple(Box(c, 0, 0, 1, 1) for c in labels))

    items = [image("a"), image("a"), image("a", "b"), image("a", "b"), image(), image("a", "c")]
    assert strata_of(items, 2) == ["a", "a", "b", "b", "(pooled)", "(pooled)"]
    assert strata_of(items, 3) == ["(pooled)"] * 6
    assert strata_of(items, 1) == ["a", "a", "b", "b", "(none)", "c"]


# In a child interpreter: mltable's engine must never share a process with TensorFlow (see
# dataset.write_mltable), and another test module may have imported TensorFlow into this one.
MLTABLE_CHECK = """
import json, shutil, sys
from pathlib import Path

import yaml

from recipes.symbol_detection.aggregate import aggregate
from recipes.symbol_detection.params import SymbolDetectionParams

raw, out = Path(sys.argv[1]), Path(sys.argv[2])
aggregate(raw, out / "ours", SymbolDetectionParams())
engine_loaded = "azureml.dataprep" in sys.modules

import mltable

(out / "theirs").mkdir()
shutil.copy(out / "ours" / "annotations.jsonl", out / "theirs")
table = mltable.from_json_lines_files(
    paths=[{"file": str((out / "theirs" / "annotations.jsonl").resolve())}],
    invalid_lines="error",
    include_path_column=False,
)
table = table.convert_column_types({"image_url": mltable.DataType.to_stream()})
table.save(str(out / "theirs"), colocated=False, overwrite=True)
frame = mltable.load(str(out / "ours")).to_pandas_dataframe()
print(json.dumps({
    "engine_loaded_by_aggregation": engine_loaded,
    "ours": yaml.safe_load((out / "ours" / "MLTable").read_text()),
    "theirs": yaml.safe_load((out / "theirs" / "MLTable").read_text()),
    "rows": len(frame),
    "columns": sorted(frame.columns),
}))
"""


def test_the_mltable_written_is_the_mltable_packages_own_and_loads_with_it(
    raw: Path, tmp_path: Path
) -> None:
    project = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", MLTABLE_CHECK, str(raw), str(tmp_path)],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["engine_loaded_by_aggregation"] is False
    assert report["ours"] == report["theirs"]
    assert report["rows"] == 30
    assert report["columns"] == ["image_details", "image_url", "label"]
