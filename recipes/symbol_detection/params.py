"""Parameters of the symbol detection recipe; ``{}`` trains on a data folder as ``load-zip``
writes it (``images/`` and ``labels/``) with the small local detector.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recipes.base import RecipeParams

# A datastore name as Azure ML accepts it; a path inside it without '..', spaces or quotes.
_DATASTORE = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_DATASTORE_PATH = re.compile(r"^[A-Za-z0-9._\-/]{0,1024}$")
_WORKSPACE = re.compile(
    r"^subscriptions/[A-Za-z0-9-]{1,64}/resourcegroups/[A-Za-z0-9._()\-]{1,90}"
    r"/workspaces/[A-Za-z0-9_\-]{1,64}$"
)
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")

AGGREGATION_PARAMS = (
    "images_dir",
    "labels_dir",
    "classes",
    "on_invalid",
    "datastore",
    "datastore_path",
    "workspace",
    "max_images",
)
SPLIT_PARAMS = (
    "use_stratified_split",
    "stratified_split_n_fold",
    "mandatory_train_filenames",
    "mandatory_val_filenames",
    "seed",
)
TRAIN_PARAMS = (
    "epochs",
    "image_size",
    "batch_size",
    "learning_rate",
    "score_threshold",
    "seed",
    # The AutoML task on Azure ML (automl.py).
    "automl_search_space",
    "automl_max_trials",
    "automl_max_concurrent_trials",
    "automl_timeout_minutes",
    "automl_validation_size",
)


class SymbolDetectionParams(RecipeParams):
    # -- aggregation ---------------------------------------------------------------------------
    images_dir: str = Field(
        default="images", description="folder of the data prefix holding the JPEG images"
    )
    labels_dir: str = Field(
        default="labels",
        description="folder of the data prefix holding one <image stem>.jsonl label file each",
    )
    classes: tuple[str, ...] | None = Field(
        default=None,
        max_length=1000,
        description=(
            "the known classes; a box of any other class is invalid. None: the labels "
            "folder's classes.txt (load-zip writes it), else every class seen is known"
        ),
    )
    on_invalid: Literal["error", "warn"] = Field(
        default="error",
        description=(
            "a label for a missing image, an image without a label file, a box outside [0, 1] "
            "or of zero area, an unknown class: 'error' fails the aggregation naming the "
            "first; 'warn' drops the image or box and counts it"
        ),
    )
    datastore: str | None = Field(
        default=None,
        description=(
            "the Azure ML datastore holding the data prefix: each image_url becomes "
            "azureml://[<workspace>/]datastores/<datastore>/paths/<datastore_path>/"
            "<images_dir>/<file>. None (local runs): image_url is the path relative to the "
            "data set folder, which then carries the images"
        ),
    )
    datastore_path: str | None = Field(
        default=None,
        description="the data prefix's path inside the datastore (required with datastore)",
    )
    workspace: str | None = Field(
        default=None,
        description=(
            "subscriptions/<id>/resourcegroups/<rg>/workspaces/<name>: the long (absolute) form "
            "of the datastore URI; None: the short form azureml://datastores/..."
        ),
    )
    max_images: int = Field(default=100_000, ge=1, le=10_000_000)
    # -- split ---------------------------------------------------------------------------------
    use_stratified_split: bool = Field(
        default=True, description="False: every image trains (no validation set)"
    )
    stratified_split_n_fold: int = Field(
        default=5,
        ge=2,
        le=100,
        description="k of the stratified k-fold on the images' class composition; one fold "
        "is the validation set",
    )
    mandatory_train_filenames: tuple[str, ...] = Field(
        default=(), max_length=100_000, description="image file names always in training"
    )
    mandatory_val_filenames: tuple[str, ...] = Field(
        default=(), max_length=100_000, description="image file names always in validation"
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    # -- train (the local detector) ------------------------------------------------------------
    epochs: int = Field(default=8, ge=1, le=1000)
    image_size: int = Field(
        default=128, ge=64, le=1024, description="square input side, a multiple of 32"
    )
    batch_size: int = Field(default=8, ge=1, le=256)
    learning_rate: float = Field(default=1e-3, gt=0.0, le=1.0)
    score_threshold: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="detections at or above this confidence count for precision and recall",
    )
    # -- train on Azure ML: the AutoML task (automl.py) -----------------------------------------
    automl_search_space: str | None = Field(
        default=None,
        max_length=20_000,
        description="a YAML list of search subspaces (model_name yolov5 / fasterrcnn_* ..., "
        "hyperparameter ranges); unset: AutoML's auto mode",
    )
    automl_max_trials: int = Field(default=8, ge=1, le=1000)
    automl_max_concurrent_trials: int = Field(default=4, ge=1, le=100)
    automl_timeout_minutes: int = Field(default=180, ge=1, le=43_200)
    automl_validation_size: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="held out when the split made no validation set"
    )

    @field_validator("automl_search_space")
    @classmethod
    def _search_space(cls, value: str | None) -> str | None:
        if value is not None:
            from recipes.symbol_detection.automl import parse_search_space

            parse_search_space(value)
        return value

    @field_validator("images_dir", "labels_dir")
    @classmethod
    def _folder(cls, value: str) -> str:
        if not _FOLDER.match(value):
            raise ValueError("a folder name: letters, digits, '.', '_', '-' (no '/')")
        return value

    @field_validator("datastore")
    @classmethod
    def _datastore(cls, value: str | None) -> str | None:
        if value is not None and not _DATASTORE.match(value):
            raise ValueError("a datastore name: letters, digits and '_'")
        return value

    @field_validator("datastore_path")
    @classmethod
    def _datastore_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip("/")
        if not _DATASTORE_PATH.match(value) or any(s in ("", ".", "..") for s in value.split("/")):
            raise ValueError("a path inside the datastore: segments of letters, digits, '._-'")
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str | None) -> str | None:
        if value is not None and not _WORKSPACE.match(value.strip("/")):
            raise ValueError("subscriptions/<id>/resourcegroups/<rg>/workspaces/<name>")
        return None if value is None else value.strip("/")

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("at least one class (or None)")
        if len(set(value)) != len(value):
            raise ValueError("classes listed twice")
        if any(not name or len(name) > 100 for name in value):
            raise ValueError("class names are 1 to 100 characters")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int) -> int:
        if value % 32:
            raise ValueError("a multiple of 32 (the detector's coarsest stride)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SymbolDetectionParams:
        if self.datastore is not None and self.datastore_path is None:
            raise ValueError("datastore_path is required with datastore")
        if self.workspace is not None and self.datastore is None:
            raise ValueError("workspace is only used with datastore")
        both = sorted(set(self.mandatory_train_filenames) & set(self.mandatory_val_filenames))
        if both:
            raise ValueError(f"files listed for both training and validation: {both[:10]}")
        return self


def coerce_params(params: RecipeParams | None) -> SymbolDetectionParams:
    """The stage functions accept any ``RecipeParams``; re-validate foreign ones as ours."""
    if isinstance(params, SymbolDetectionParams):
        return params
    if params is None:
        return SymbolDetectionParams()
    return SymbolDetectionParams.model_validate(params.model_dump())
