"""Train (locally): the small RetinaNet on the split's training images, scored on validation.

Reads ``train/annotations.jsonl`` (and ``validation/``), ``classes.json`` and the images the
split carries (local runs; a split whose ``image_url`` are datastore URIs is for Azure ML and
is refused here). Fits ``epochs`` epochs with Adam (focal loss for classes, Huber for boxes),
checking for cancellation after every batch, then scores the validation images (the training
images when the split made no validation set, said in ``evaluated_on``) with pycocotools:

- ``mean_average_precision``: COCO mAP at IoU 0.5 (what AutoML's image object detection
  reports under that name with its default ``validation_iou_threshold``), also ``map_50``;
- ``map_50_95``: COCO mAP averaged over IoU 0.5:0.95;
- ``precision`` and ``recall``: detections at or above ``score_threshold``, matched greedily
  to ground truth of the same class at IoU 0.5.

The model (``model.SymbolDetector``, MLflow ``pyfunc``) carries the weights and its config.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipes.base import RecipeContext, RecipeParams, TrainResult
from recipes.symbol_detection.dataset import (
    ANNOTATIONS,
    TRAIN,
    VALIDATION,
    ImageLabels,
    read_annotations,
    read_classes,
)
from recipes.symbol_detection.params import SymbolDetectionParams, coerce_params
from shared.errors import DataValidationError

log = logging.getLogger(__name__)
MATCH_IOU = 0.5
# The params the local detector reads (the automl_* ones are Azure ML's).
LOCAL_TRAIN_PARAMS = (
    "epochs",
    "image_size",
    "batch_size",
    "learning_rate",
    "score_threshold",
    "seed",
)


def train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    import cloudpickle
    import keras

    from recipes.symbol_detection import model as model_module

    p = coerce_params(params)
    ctx = ctx or RecipeContext()
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = read_classes(split_dir)
    train_items = read_annotations(split_dir / TRAIN / ANNOTATIONS)
    validation_file = split_dir / VALIDATION / ANNOTATIONS
    evaluated_on = VALIDATION if validation_file.is_file() else TRAIN
    eval_items = read_annotations(validation_file) if evaluated_on == VALIDATION else train_items
    index = {name: i for i, name in enumerate(classes)}
    train_images = [_open(split_dir, item) for item in train_items]
    x = model_module.to_input(train_images, p.image_size)
    y = _targets(train_items, index, p.image_size)

    config = {
        "classes": classes,
        "num_classes": len(classes),
        "image_size": p.image_size,
        "seed": p.seed,
    }
    detector = model_module.build_detector(config)
    detector.compile(optimizer=keras.optimizers.Adam(p.learning_rate, global_clipnorm=10.0))
    losses: list[float] = []
    started = time.perf_counter()
    for epoch in range(p.epochs):
        ctx.check_cancelled()
        history = detector.fit(
            x,
            y,
            batch_size=p.batch_size,
            epochs=1,
            verbose=0,
            callbacks=[_Cancellation(ctx)],
        )
        losses.append(float(history.history["loss"][-1]))
        log.info("epoch %d/%d: loss %.4f", epoch + 1, p.epochs, losses[-1])
    fit_s = time.perf_counter() - started
    ctx.check_cancelled()

    eval_images = [_open(split_dir, item) for item in eval_items]
    detections = model_module.detect(detector, eval_images, p.image_size, p.batch_size)
    scores = evaluate(eval_items, eval_images, detections, classes, p.score_threshold)
    metrics = {
        **scores,
        "train_loss": losses[-1],
        "train_images": float(len(train_items)),
        "evaluated_images": float(len(eval_items)),
    }
    (out_dir / "metrics.json").write_text(
        json.dumps({**metrics, "evaluated_on": evaluated_on, "epoch_losses": losses}, indent=2)
    )
    weights = out_dir / model_module.WEIGHTS_FILE
    detector.save_weights(weights)
    config_file = out_dir / model_module.CONFIG_FILE
    config_file.write_text(json.dumps(config, indent=2))
    # The model class travels inside the MLflow model: loading needs only its requirements.
    cloudpickle.register_pickle_by_value(sys.modules[model_module.__name__])
    return TrainResult(
        model=model_module.SymbolDetector(),
        flavor="pyfunc",
        metrics=metrics,
        params={
            **p.model_dump(include=set(LOCAL_TRAIN_PARAMS)),
            "classes": ",".join(classes),
            "evaluated_on": evaluated_on,
            "fit_seconds": round(fit_s, 1),
        },
        artifacts=[out_dir / "metrics.json"],
        log_model_options={
            "artifacts": {"weights": str(weights), "config": str(config_file)},
        },
    )


class _Cancellation:
    """A Keras callback: a cancelled run stops after the batch in flight."""

    def __new__(cls, ctx: RecipeContext) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                ctx.check_cancelled()

        return Callback()


def _open(split_dir: Path, item: ImageLabels) -> Any:
    from PIL import Image

    if "://" in item.image_url or item.image_url.startswith("/"):
        raise DataValidationError(
            f"image_url {item.image_url!r} is not in the split folder: local training needs "
            "the images carried (aggregate without 'datastore'), or train on Azure ML",
            file=ANNOTATIONS,
        )
    path = (split_dir / item.image_url).resolve()
    if split_dir.resolve() not in path.parents:
        raise DataValidationError(f"image_url {item.image_url!r} leaves the split folder")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataValidationError(f"cannot read {item.image_url}: {exc}") from None


def _targets(items: list[ImageLabels], index: dict[str, int], size: int) -> dict[str, Any]:
    """Keras-hub's padded targets: ``boxes`` [n, m, 4] yxyx in input pixels, ``labels``
    [n, m] (-1 pads)."""
    import numpy as np

    most = max(1, max(len(item.boxes) for item in items))
    boxes = np.full((len(items), most, 4), -1.0, dtype="float32")
    labels = np.full((len(items), most), -1, dtype="int32")
    for i, item in enumerate(items):
        for j, box in enumerate(item.boxes):
            if box.label not in index:
                raise DataValidationError(f"class {box.label!r} is not in classes.json")
            boxes[i, j] = [box.y0 * size, box.x0 * size, box.y1 * size, box.x1 * size]
            labels[i, j] = index[box.label]
    return {"boxes": boxes, "labels": labels}


def evaluate(
    items: list[ImageLabels],
    images: list[Any],
    detections: list[tuple[Any, Any, Any]],
    classes: list[str],
    score_threshold: float,
) -> dict[str, float]:
    """COCO mAP (pycocotools) and precision/recall at ``score_threshold``, IoU 0.5."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    index = {name: i for i, name in enumerate(classes)}
    truth: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
    }
    found: list[dict[str, Any]] = []
    true_positives = predicted = actual = 0
    for image_id, (item, image, (boxes, labels, scores)) in enumerate(
        zip(items, images, detections, strict=True), start=1
    ):
        width, height = image.size
        truth["images"].append({"id": image_id, "width": width, "height": height})
        gt = []
        for box in item.boxes:
            x0, y0, x1, y1 = box.x0 * width, box.y0 * height, box.x1 * width, box.y1 * height
            gt.append((index[box.label], (x0, y0, x1, y1)))
            truth["annotations"].append(
                {
                    "id": len(truth["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": index[box.label] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": box.is_crowd,
                }
            )
        for (x0, y0, x1, y1), label, score in zip(boxes, labels, scores, strict=True):
            found.append(
                {
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
        kept = [
            (int(c), tuple(b))
            for b, c, s in zip(boxes, labels, scores, strict=True)
            if s >= score_threshold
        ]
        true_positives += _matches(kept, gt)
        predicted += len(kept)
        actual += len(gt)
    map_50_95 = map_50 = 0.0
    if found and truth["annotations"]:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            coco = COCO()
            coco.dataset = truth
            coco.createIndex()
            evaluation = COCOeval(coco, coco.loadRes(found), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        # -1 where a metric has no ground truth; there is some here.
        map_50_95, map_50 = (max(float(v), 0.0) for v in evaluation.stats[:2])
    return {
        "mean_average_precision": map_50,
        "map_50": map_50,
        "map_50_95": map_50_95,
        "precision": true_positives / predicted if predicted else 0.0,
        "recall": true_positives / actual if actual else 0.0,
    }


def _matches(
    found: Sequence[tuple[int, tuple[float, ...]]], truth: Sequence[tuple[int, tuple[float, ...]]]
) -> int:
    """Detections (sorted as given: by score) matched one-to-one to same-class ground truth."""
    used: set[int] = set()
    hits = 0
    for label, box in found:
        best, best_iou = None, MATCH_IOU
        for j, (true_label, true_box) in enumerate(truth):
            if j in used or true_label != label:
                continue
            overlap = _iou(box, true_box)
            if overlap >= best_iou:
                best, best_iou = j, overlap
        if best is not None:
            used.add(best)
            hits += 1
    return hits


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


__all__ = ["SymbolDetectionParams", "evaluate", "train"]
