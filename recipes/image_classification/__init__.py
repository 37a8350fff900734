"""Image classification: MobileNet transfer learning on folders of labelled images.

Ported from the AzureML "Image Classification" use case: images arrive as one folder per label
(``<label>/<image>`` or ``<group>/<label>/<image>``); aggregation validates and resizes them
once; the split is stratified by label; training stacks global average pooling and a softmax
Dense layer on a frozen MobileNet (ImageNet weights by default) and fits it with Adam on the
categorical cross-entropy for 4 epochs. Scored on the held-out validation images: accuracy,
macro precision/recall/F1 (primary: ``f1_macro``), a confusion-matrix heatmap and per-class
metrics. The registered model (MLflow ``tensorflow`` flavor, Keras 3) takes raw float32 RGB
pixels (0..255) of ``image_size`` x ``image_size`` and returns class probabilities; the class
names are in the model metadata (``classes``).

Importing this package is cheap: Pillow, pandas and TensorFlow are imported by the stage
functions that use them. Production runs use the defaults (``weights="imagenet"``, 224 px,
alpha 1.0); offline demos and tests pass ``{"weights": "none", "image_size": 32,
"alpha": 0.25}`` or similar (see ``params.py``).
"""

from __future__ import annotations

from recipes.base import QualityGate, Recipe
from recipes.image_classification.aggregate import aggregate
from recipes.image_classification.params import ImageClassificationParams
from recipes.image_classification.sample_data import write_sample_data
from recipes.image_classification.split import split
from recipes.image_classification.training import build_model, pinned_requirements, train

__all__ = [
    "ImageClassificationParams",
    "aggregate",
    "build_model",
    "recipe",
    "split",
    "train",
    "write_sample_data",
]

# Promotion floor: a model must be clearly better than always answering one class.
MIN_F1_MACRO = 0.5

recipe = Recipe(
    name="image_classification",
    version="1.0.0",
    description=(
        "MobileNet transfer learning on labelled image folders (frozen base + softmax head; "
        "class probabilities per image)"
    ),
    params_model=ImageClassificationParams,
    primary_metric="f1_macro",
    greater_is_better=True,
    compute="gpu",
    aggregate=aggregate,
    split=split,
    train=train,
    write_sample_data=write_sample_data,
    quality_gate=QualityGate({"f1_macro": (">=", MIN_F1_MACRO)}),
    pip_requirements=pinned_requirements(),
    # Aggregation resizes every image once; split draws the validation share per label.
    stage_params={"aggregation": ("image_size",), "split": ("validation_fraction", "seed")},
)
