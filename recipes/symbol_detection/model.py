"""The local detector and the ``mlflow.pyfunc`` model that serves it.

The detector is keras-hub's RetinaNet over a small ResNet (basic blocks, one per stage) with a
feature pyramid on P3-P5, anchors of two scales and three aspect ratios, one convolution
before each prediction head and no pretrained weights (nothing is downloaded). Images are
resized (stretched) to ``image_size`` x ``image_size`` and scaled to [0, 1]; boxes are
``yxyx`` in those pixels.

``SymbolDetector`` (an ``mlflow.pyfunc.PythonModel``) keeps the weights and ``config.json`` as
artifacts and rebuilds the network from the config when loaded. ``predict`` takes raw images
— a DataFrame with an ``image`` column of encoded image bytes (JPEG, PNG; or base64 text), or a
list of bytes, PIL images or HxWx3 arrays — and returns one row per image: ``boxes`` (each
``[xmin, ymin, xmax, ymax]`` in the image's own pixels), ``classes`` (names) and ``scores``.

This module imports nothing from the project (its class is pickled by value into the MLflow
model, so loading the model needs only the pip requirements) and imports numpy, Pillow and
Keras only inside functions.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "detector.weights.h5"
# Detections kept per image, and the confidence below which the decoder drops them (low, so
# that mAP sees the whole precision-recall curve).
MAX_DETECTIONS = 100
MIN_CONFIDENCE = 0.05


def build_detector(config: Mapping[str, Any]) -> Any:
    """A fresh RetinaNet for ``config`` (``num_classes``, ``image_size``, ``seed``)."""
    import keras
    import keras_hub

    size = int(config["image_size"])
    keras.utils.set_random_seed(int(config.get("seed", 0)))
    shape = (size, size, 3)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[5],
        stackwise_num_filters=[64, 64, 96, 128],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        image_shape=shape,
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=5, use_p5=False, image_shape=shape
    )
    anchors = keras_hub.layers.AnchorGenerator(
        "yxyx",
        min_level=3,
        max_level=5,
        num_scales=2,
        aspect_ratios=[0.5, 1.0, 2.0],
        anchor_size=3,
    )
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="yxyx",
        from_logits=True,
        iou_threshold=0.5,
        confidence_threshold=MIN_CONFIDENCE,
        max_detections=MAX_DETECTIONS,
    )
    return keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone,
        num_classes=int(config["num_classes"]),
        bounding_box_format="yxyx",
        anchor_generator=anchors,
        pre_logits_num_conv_layers=1,
        prediction_decoder=decoder,
    )


def load_image(value: Any) -> Any:
    """A PIL RGB image from encoded bytes, base64 text, a PIL image or an HxWx3 array."""
    import numpy as np
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        return Image.fromarray(value.astype("uint8")).convert("RGB")
    if isinstance(value, str):
        value = base64.b64decode(value, validate=True)
    if isinstance(value, bytes | bytearray):
        with Image.open(io.BytesIO(value)) as image:
            return image.convert("RGB")
    raise TypeError(
        "an image is encoded bytes, base64 text, a PIL image or an array, not "
        f"{type(value).__name__}"
    )


def to_input(images: Sequence[Any], size: int) -> Any:
    """A float32 [n, size, size, 3] batch in [0, 1] from PIL images."""
    import numpy as np
    from PIL import Image

    batch = np.zeros((len(images), size, size, 3), dtype="float32")
    for i, image in enumerate(images):
        resized = image.resize((size, size), Image.Resampling.BILINEAR)
        batch[i] = np.asarray(resized, dtype="float32") / 255.0
    return batch


def detect(
    detector: Any, images: Sequence[Any], size: int, batch_size: int = 8
) -> list[tuple[Any, Any, Any]]:
    """Per image: boxes ``[k, 4]`` as x0, y0, x1, y1 in its own pixels, class ids, scores."""
    import numpy as np

    found = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = to_input(chunk, size)
        # Eagerly: keras-hub's NMS cannot trace an unknown batch size (Model.predict's graph).
        decoded = detector.decode_predictions(detector(batch, training=False), batch)
        out = {k: np.asarray(v) for k, v in decoded.items()}
        for j, image in enumerate(chunk):
            count = int(out["num_detections"][j])
            yxyx = np.asarray(out["boxes"][j][:count], dtype="float64")
            width, height = image.size
            xyxy = (
                np.stack(
                    [
                        yxyx[:, 1] * width / size,
                        yxyx[:, 0] * height / size,
                        yxyx[:, 3] * width / size,
                        yxyx[:, 2] * height / size,
                    ],
                    axis=1,
                )
                if count
                else np.zeros((0, 4))
            )
            xyxy = np.clip(xyxy, 0, [width, height, width, height])
            found.append(
                (
                    xyxy,
                    np.asarray(out["labels"][j][:count], dtype="int64"),
                    np.asarray(out["confidence"][j][:count], dtype="float64"),
                )
            )
    return found


class SymbolDetector(PythonModel):
    """Raw images in; boxes, classes and scores out (module docstring)."""

    def load_context(self, context: Any) -> None:
        config = json.loads(Path(context.artifacts["config"]).read_text())
        self._config = config
        self._classes = list(config["classes"])
        self._detector = build_detector(config)
        self._detector.load_weights(context.artifacts["weights"])

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise ValueError("the input DataFrame needs an 'image' column of image bytes")
            values = list(model_input["image"])
        else:
            values = list(model_input)
        images = [load_image(v) for v in values]
        rows = []
        for boxes, labels, scores in detect(
            self._detector, images, int(self._config["image_size"])
        ):
            rows.append(
                {
                    "boxes": [[round(float(v), 2) for v in box] for box in boxes],
                    "classes": [self._classes[int(c)] for c in labels],
                    "scores": [round(float(s), 4) for s in scores],
                }
            )
        return pd.DataFrame(rows, columns=["boxes", "classes", "scores"])
