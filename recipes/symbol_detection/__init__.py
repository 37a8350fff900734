"""Symbol detection: object detection of symbols on engineering drawings.

Ported from the engineering-drawings team's Azure ML pipeline (seed "AML Pipeline Modules
Overview"): a zip of JPEG drawings with one ``.npy`` box array each is loaded into the store
(``retrainer load-zip``: ``loader.py``) as ``images/`` and ``labels/`` (one AutoML JSON line per
image); then

- ``aggregate``: the per-image label files -> one ``annotations.jsonl`` + ``MLTable`` as Azure
  ML AutoML for images reads them (``image_url`` an absolute datastore URI, or for local runs a
  path beside the images, which travel with the data set), validated per ``on_invalid``
  (``aggregate.py``);
- ``split``: a stratified k-fold on the images' class composition, one fold for validation,
  ``mandatory_train_filenames`` / ``mandatory_val_filenames`` always honoured; a train and a
  validation ``MLTable`` (``split.py``);
- ``train``: locally, a small RetinaNet (keras-hub, no pretrained weights) fitted for a few
  epochs on the CPU and scored with pycocotools on the validation images (mAP@0.5:0.95 as
  ``mean_average_precision``, mAP@0.5, precision and recall at ``score_threshold``); the
  registered ``pyfunc`` model takes raw images and returns boxes, classes and scores
  (``training.py``, ``model.py``).

Importing this package is cheap: Pillow, numpy, TensorFlow/Keras and pycocotools are
imported by the stage functions that use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recipes.base import Recipe, lazy, pinned
from recipes.symbol_detection.params import (
    AGGREGATION_PARAMS,
    SPLIT_PARAMS,
    TRAIN_PARAMS,
    SymbolDetectionParams,
)

__all__ = ["SymbolDetectionParams", "load_archive", "recipe"]


def load_archive(archive: Path, out_dir: Path) -> Mapping[str, Any]:
    """The team's zip -> ``out_dir/images`` + ``out_dir/labels`` (``loader.py``)."""
    from recipes.symbol_detection.loader import convert_zip

    return convert_zip(Path(archive), Path(out_dir)).as_dict()


recipe = Recipe(
    name="symbol_detection",
    version="1.0.0",
    description=(
        "Symbol detection on engineering drawings: AutoML object-detection MLTables, a "
        "stratified split, a small local RetinaNet scored by COCO mAP (boxes, classes and "
        "scores from raw images)"
    ),
    params_model=SymbolDetectionParams,
    primary_metric="mean_average_precision",
    greater_is_better=True,
    compute="cpu",
    aggregate=lazy("recipes.symbol_detection.aggregate:aggregate"),
    split=lazy("recipes.symbol_detection.split:split"),
    train=lazy("recipes.symbol_detection.training:train"),
    write_sample_data=lazy("recipes.symbol_detection.sample_data:write_sample_data"),
    # What loading the registered model needs.
    pip_requirements=pinned("tensorflow-cpu", "keras", "keras-hub", "numpy", "pillow", "pandas"),
    stage_params={
        "aggregation": AGGREGATION_PARAMS,
        "split": SPLIT_PARAMS,
        "train": TRAIN_PARAMS,
    },
    load_archive=load_archive,
    # Each split (train/ + validation/ MLTables) becomes the next version of this data asset.
    data_asset="{model}-training-data",
    # On Azure ML an AutoML image object-detection task replaces the local detector.
    automl=lazy("recipes.symbol_detection.automl:automl_task"),
)
