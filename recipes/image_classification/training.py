"""Train stage: MobileNet transfer learning, evaluated on the validation images.

The model (``build_model``), as in the use case this recipe is ported from::

    image (float32 RGB, 0..255) -> Rescaling to [-1, 1] (MobileNet's preprocess_input)
      -> MobileNet without its top (frozen unless trainable_base) -> GlobalAveragePooling2D
      -> Dense(n_classes, softmax)

trained with Adam on the categorical cross-entropy for ``epochs`` epochs. The preprocessing is a
layer of the model, so the registered model takes raw pixels of ``image_size`` x ``image_size``
and returns one probability per class; the class names (column order) travel with it in the
MLflow model metadata (``classes``), in the ``labels.json`` artifact and in the run params.

With the base frozen (the default) its output does not change during training (batch norm runs
in inference mode, there is no augmentation), so the pooled MobileNet features of the training
images are computed once and only the Dense head is fitted on them: the same result as fitting
the whole model, without a MobileNet forward pass per image and epoch. With ``trainable_base``
the whole model is fitted on the images; pretrained batch norm layers stay frozen (inference
mode, ImageNet statistics), as recommended for fine-tuning.

``weights="none"`` is for tests and offline demos. A frozen random MobileNet is useless as a
feature extractor (its activations vanish without trained batch norm), so a real model from
scratch needs ``trainable_base=True`` and many more epochs (on the sample data: about 30 epochs,
batch size 16, for a macro F1 around 0.75 at 64 px).

TensorFlow is imported on the first call, not with the recipe. It uses a GPU when it sees one
(``tensorflow`` with CUDA, not the ``tensorflow-cpu`` build); the device used is logged in the
``device`` param.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from recipes.base import RecipeContext, RecipeParams, TrainResult, pinned
from recipes.image_classification.dataset import (
    TRAIN_FILE,
    VALIDATION_FILE,
    Example,
    read_examples,
    read_metadata,
)
from recipes.image_classification.params import (
    IMAGENET_SIZES,
    ImageClassificationParams,
    coerce_params,
)
from shared.errors import ConfigurationError, DataValidationError

if TYPE_CHECKING:
    import numpy as np

CONFUSION_MATRIX_FILE = "confusion_matrix.png"
PER_CLASS_FILE = "per_class_metrics.json"
LABELS_ARTIFACT = "labels.json"
HISTORY_FILE = "history.json"

# Where keras.applications.MobileNet downloads its ImageNet weights from.
WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
_ALPHA_TEXT = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}

INPUT_DESCRIPTION = "float32 RGB pixel values 0..255, shape (n, image_size, image_size, 3)"
OUTPUT_DESCRIPTION = "float32 class probabilities, shape (n, len(classes)), in the order of classes"

log = logging.getLogger(__name__)


def train(
    split_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> TrainResult:
    import numpy as np

    p = coerce_params(params)
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    train_examples = read_examples(split_dir, TRAIN_FILE)
    validation_examples = read_examples(split_dir, VALIDATION_FILE)
    classes = sorted({e.label for e in train_examples})
    if len(classes) < 2:
        raise DataValidationError(
            f"training needs images of at least 2 labels, found {classes}", file=TRAIN_FILE
        )
    unknown = sorted({e.label for e in validation_examples} - set(classes))
    if unknown:
        raise DataValidationError(
            f"label(s) {unknown} have no training image", file=VALIDATION_FILE
        )
    stored_size = read_metadata(split_dir).get("image_size")
    if stored_size != p.image_size:
        log.warning(
            "images were aggregated at %s px; resizing them to image_size=%d while loading",
            stored_size,
            p.image_size,
        )

    tf, keras = _tensorflow()
    keras.utils.set_random_seed(p.seed)
    device = describe_device(tf)
    weights_file = resolve_weights(p)
    if weights_file is None and not p.trainable_base:
        log.warning(
            "weights='none' with a frozen base trains only the head on random MobileNet "
            "features, which carry almost no signal: fine for tests, not for a real model"
        )
    log.info("training MobileNet(alpha=%s, %d px) on %s", p.alpha, p.image_size, device)
    model, extractor, head = build_model(len(classes), p, weights_file)

    index = {label: i for i, label in enumerate(classes)}
    y_train = np.array([index[e.label] for e in train_examples])
    y_validation = np.array([index[e.label] for e in validation_examples])
    one_hot = keras.utils.to_categorical(y_train, num_classes=len(classes))

    started = time.perf_counter()
    trainer = head if not p.trainable_base else keras.Model(model.inputs, model.outputs)
    # A separate compiled view: the registered model stays uncompiled (no optimizer state).
    trainer.compile(
        optimizer=keras.optimizers.Adam(learning_rate=p.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    if p.trainable_base:
        images = image_dataset(split_dir, train_examples, p, labels=one_hot, shuffle=True)
        # The dataset reshuffles itself every epoch (fit cannot shuffle a tf.data.Dataset).
        history = trainer.fit(images, epochs=p.epochs, shuffle=False, verbose=0)
    else:
        features = extractor.predict(image_dataset(split_dir, train_examples, p), verbose=0)
        history = trainer.fit(
            features, one_hot, batch_size=p.batch_size, epochs=p.epochs, shuffle=True, verbose=0
        )
    fit_seconds = time.perf_counter() - started

    validation_images = image_dataset(split_dir, validation_examples, p)
    probabilities = model.predict(validation_images, verbose=0)
    metrics = classification_metrics(y_validation, probabilities, len(classes))
    epochs_history = {k: [float(v) for v in values] for k, values in history.history.items()}
    metrics.update(
        {
            "train_loss": epochs_history["loss"][-1],
            "train_accuracy": epochs_history["accuracy"][-1],
            "fit_seconds": round(fit_seconds, 3),
        }
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = [
        write_labels(out_dir, classes, p.image_size),
        write_per_class_metrics(out_dir, y_validation, probabilities, classes),
        write_confusion_matrix(out_dir, y_validation, probabilities.argmax(axis=1), classes),
    ]
    history_path = out_dir / HISTORY_FILE
    history_path.write_text(json.dumps(epochs_history, indent=2) + "\n")
    artifacts.append(history_path)

    input_example = next(iter(validation_images))[:1].numpy().astype("float32")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return TrainResult(
        model=model,
        flavor="tensorflow",
        metrics=metrics,
        params={
            **p.model_dump(mode="json"),
            "classes": classes,
            "n_classes": len(classes),
            "train_images": len(train_examples),
            "validation_images": len(validation_examples),
            "device": device,
            "weights_file": Path(weights_file).name if weights_file else "none",
            "total_parameters": model.count_params(),
            "trainable_parameters": trainable,
            "tensorflow_version": tf.__version__,
            "keras_version": keras.__version__,
        },
        artifacts=artifacts,
        input_example=input_example,
        log_model_options={
            # Stored in the model's MLmodel file: travels with every registered version.
            "metadata": {
                "classes": classes,
                "image_size": p.image_size,
                "input": INPUT_DESCRIPTION,
                "output": OUTPUT_DESCRIPTION,
            },
        },
    )


def _tensorflow() -> tuple[ModuleType, ModuleType]:
    try:
        import keras
        import tensorflow as tf
    except ImportError as exc:
        raise ConfigurationError(
            "the image_classification train stage needs TensorFlow: install "
            "retrainer[image-classification]"
        ) from exc
    return tf, keras


def describe_device(tf: ModuleType) -> str:
    """``"GPU:0 (<name>)"`` when TensorFlow sees a GPU (Keras then trains on it), else ``"CPU"``."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = details.get("device_name", "unknown")
    more = f", {len(gpus) - 1} more GPU(s) unused" if len(gpus) > 1 else ""
    return f"GPU:0 ({name}{more})"


def weights_file_name(params: ImageClassificationParams) -> str:
    """The Keras file with the ImageNet weights of MobileNet without its top for ``params``."""
    rows = params.image_size if params.image_size in IMAGENET_SIZES else 224
    return f"mobilenet_{_ALPHA_TEXT[params.alpha]}_{rows}_tf_no_top.h5"


def resolve_weights(params: ImageClassificationParams) -> str | None:
    """Local path of the ImageNet weights (downloaded once into the Keras cache), or None.

    Raises ``ConfigurationError`` saying which file to provide when it cannot be fetched.
    """
    if params.weights == "none":
        return None
    import keras

    name = weights_file_name(params)
    try:
        return str(keras.utils.get_file(name, WEIGHTS_URL + name, cache_subdir="models"))
    except Exception as exc:  # Keras raises a bare Exception for URL and HTTP errors
        raise ConfigurationError(
            f"ImageNet weights for MobileNet are not available ({exc}). Without network "
            f"access, put {name} (from {WEIGHTS_URL}{name}) into $KERAS_HOME/models "
            "(default ~/.keras/models), or train from scratch with weights='none'."
        ) from exc


def build_model(
    n_classes: int, params: ImageClassificationParams, weights_file: str | None = None
) -> tuple[Any, Any, Any]:
    """(model, feature extractor, head): three views sharing the same layers.

    ``model`` maps raw pixels to class probabilities (this one is registered); ``extractor``
    maps raw pixels to the pooled MobileNet features; ``head`` maps those features to class
    probabilities.
    """
    _, keras = _tensorflow()
    size = params.image_size
    inputs = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    # MobileNet's preprocess_input ("tf" mode: x / 127.5 - 1) as a layer of the model.
    scaled = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    base = keras.applications.MobileNet(
        include_top=False,
        weights=weights_file,
        input_shape=(size, size, 3),
        alpha=params.alpha,
    )
    base.trainable = params.trainable_base
    batch_norms = [
        layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if weights_file is not None:
        # Fine-tuning keeps batch norm in inference mode with the ImageNet statistics (Keras
        # runs a non-trainable BatchNormalization in inference mode; passing training=False
        # when calling the base is not enough, fit overrides it).
        for layer in batch_norms:
            layer.trainable = False
    else:
        # From scratch, batch norm learns its statistics; with momentum 0.9 (Keras: 0.99) the
        # moving averages used for prediction settle within the few steps small data sets give.
        for layer in batch_norms:
            layer.momentum = 0.9
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(base(scaled))
    classifier = keras.layers.Dense(n_classes, activation="softmax", name="classes")
    model = keras.Model(inputs, classifier(pooled), name="mobilenet_classifier")
    extractor = keras.Model(inputs, pooled, name="mobilenet_features")
    features = keras.Input(shape=(pooled.shape[-1],), dtype="float32", name="features")
    head = keras.Model(features, classifier(features), name="classifier_head")
    return model, extractor, head


def image_dataset(
    root: Path,
    examples: Sequence[Example],
    params: ImageClassificationParams,
    *,
    labels: np.ndarray | None = None,
    shuffle: bool = False,
) -> Any:
    """A batched ``tf.data.Dataset`` of float32 images (and labels when given), read lazily."""
    tf, _ = _tensorflow()
    size = params.image_size
    paths = tf.constant([str(root / e.path) for e in examples])

    # Plain TensorFlow ops, no Python control flow: nothing for AutoGraph to convert (and its
    # source inspection of nested functions fails with a "closure mismatch" warning).
    @tf.autograph.experimental.do_not_convert
    def load(path: Any) -> Any:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        # float32; exactly the pixel values when the image already has this size.
        return tf.image.resize(image, (size, size))

    @tf.autograph.experimental.do_not_convert
    def load_with_label(path: Any, label: Any) -> tuple[Any, Any]:
        return load(path), label

    if labels is None:
        dataset = tf.data.Dataset.from_tensor_slices(paths).map(
            load, num_parallel_calls=tf.data.AUTOTUNE
        )
    else:
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
        if shuffle:
            dataset = dataset.shuffle(
                len(examples), seed=params.seed, reshuffle_each_iteration=True
            )
        dataset = dataset.map(load_with_label, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(params.batch_size).prefetch(tf.data.AUTOTUNE)


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 (0 where a class is never predicted), and the
    validation cross-entropy."""
    import numpy as np
    from sklearn.metrics import accuracy_score, log_loss, precision_recall_fscore_support

    y_pred = probabilities.argmax(axis=1)
    labels = list(range(n_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    clipped = np.clip(probabilities.astype("float64"), 1e-7, 1.0)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
        "validation_loss": float(log_loss(y_true, clipped, labels=labels)),
    }


def write_labels(out_dir: Path, classes: Sequence[str], image_size: int) -> Path:
    path = out_dir / LABELS_ARTIFACT
    content = {
        "classes": list(classes),
        "image_size": image_size,
        "input": INPUT_DESCRIPTION,
        "output": OUTPUT_DESCRIPTION,
    }
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return path


def write_per_class_metrics(
    out_dir: Path, y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]
) -> Path:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true,
        probabilities.argmax(axis=1),
        labels=list(range(len(classes))),
        average=None,
        zero_division=0,
    )
    content = {
        label: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, label in enumerate(classes)
    }
    path = out_dir / PER_CLASS_FILE
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return path


def write_confusion_matrix(
    out_dir: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> Path:
    """A heatmap of counts: rows are the true labels, columns the predicted ones."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from sklearn.metrics import confusion_matrix

    n = len(classes)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    side = max(4.0, 0.55 * n + 2.5)
    figure = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(counts, cmap="Blues", vmin=0)
    colorbar = figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    colorbar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xticks(range(n), labels=list(classes), rotation=45, ha="right")
    axes.set_yticks(range(n), labels=list(classes))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = float(counts.trace() / counts.sum()) if counts.sum() else 0.0
    axes.set_title(f"Confusion matrix ({counts.sum()} images, accuracy {accuracy:.3f})")
    if n <= 30:
        threshold = counts.max() / 2 if counts.max() else 1
        for i in range(n):
            for j in range(n):
                axes.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    color="white" if counts[i, j] > threshold else "black",
                    fontsize="small",
                )
    figure.tight_layout()
    path = out_dir / CONFUSION_MATRIX_FILE
    figure.savefig(path)
    return path


def pinned_requirements() -> tuple[str, ...]:
    """What the registered model needs to load and predict, at the versions it was trained
    with.

    ``tensorflow`` (not ``tensorflow-cpu``, even when training used that build): it is the one
    distribution with wheels for every platform, it runs on CPU-only hosts and uses a GPU where
    CUDA is present, and installing ``tensorflow-cpu`` next to the ``tensorflow`` of a GPU
    serving image would overwrite it. Both builds of one version are the same code, so the
    model loads identically. Pillow is not needed: the model takes pixel arrays.
    """
    tensorflow_version = _version("tensorflow", "tensorflow-cpu")
    tensorflow = f"tensorflow=={tensorflow_version}" if tensorflow_version else "tensorflow"
    return (tensorflow, *pinned("keras", "numpy"))


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
