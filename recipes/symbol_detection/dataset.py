"""The object-detection label format (Azure ML AutoML for images) and the folder layouts.

One JSON line per image, as AutoML's image object-detection task reads it::

    {"image_url": "azureml://datastores/<store>/paths/<path>/images/a.jpg",
     "image_details": {"format": "jpg", "width": "640px", "height": "480px"},
     "label": [{"label": "valve", "topX": 0.1, "topY": 0.2, "bottomX": 0.3, "bottomY": 0.4,
                "isCrowd": 0}]}

Box corners are fractions of the image's width (X) and height (Y), top-left origin.

Layouts:

- raw data (what ``load-zip`` uploads, what aggregation reads): ``images/<stem>.jpg`` and
  ``labels/<stem>.jsonl`` (one line, ``image_url`` the image's file name), plus
  ``labels/classes.txt`` (one class name per line).
- data set (aggregation's output) and split: ``annotations.jsonl`` + ``MLTable`` per table
  (``train/``, ``validation/``), ``classes.json``, and for local runs ``images/`` (each
  ``image_url`` then relative to the folder's root).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGES = "images"
LABELS = "labels"
CLASSES_TXT = "classes.txt"
CLASSES_JSON = "classes.json"
ANNOTATIONS = "annotations.jsonl"
MLTABLE = "MLTable"
# mltable's default partition of a JSON-lines file (20 MiB).
MLTABLE_PARTITION_BYTES = 20 * 1024 * 1024
TRAIN = "train"
VALIDATION = "validation"
DATASET_JSON = "dataset.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg")
# One label line: an image with up to MAX_BOXES boxes stays far below this.
MAX_LABEL_LINE_BYTES = 1024 * 1024
MAX_BOXES = 1000
_PIXELS = re.compile(r"^\s*(\d{1,6})\s*(px)?\s*$")


@dataclass(frozen=True)
class Box:
    label: str
    x0: float
    y0: float
    x1: float
    y1: float
    is_crowd: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "topX": self.x0,
            "topY": self.y0,
            "bottomX": self.x1,
            "bottomY": self.y1,
            "isCrowd": self.is_crowd,
        }

    @property
    def inside_unit_square(self) -> bool:
        return all(0.0 <= v <= 1.0 for v in (self.x0, self.y0, self.x1, self.y1))

    @property
    def has_area(self) -> bool:
        return self.x1 > self.x0 and self.y1 > self.y0


@dataclass(frozen=True)
class ImageLabels:
    image_url: str
    format: str
    width: int
    height: int
    boxes: tuple[Box, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "image_url": self.image_url,
            "image_details": {
                "format": self.format,
                "width": f"{self.width}px",
                "height": f"{self.height}px",
            },
            "label": [box.as_json() for box in self.boxes],
        }

    def line(self) -> str:
        return json.dumps(self.as_json(), separators=(", ", ": "))

    @property
    def file_name(self) -> str:
        return self.image_url.rsplit("/", 1)[-1]

    def with_url(self, url: str) -> ImageLabels:
        return ImageLabels(url, self.format, self.width, self.height, self.boxes)

    def with_boxes(self, boxes: Iterable[Box]) -> ImageLabels:
        return ImageLabels(self.image_url, self.format, self.width, self.height, tuple(boxes))


class LabelFormatError(ValueError):
    """A label line that is not the AutoML object-detection format; says what is wrong."""


def parse_line(text: str) -> ImageLabels:
    """One JSON line -> ``ImageLabels``; raises LabelFormatError naming the bad field."""
    if len(text) > MAX_LABEL_LINE_BYTES:
        raise LabelFormatError(f"a label line longer than {MAX_LABEL_LINE_BYTES} bytes")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelFormatError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise LabelFormatError("a label line is a JSON object")
    url = value.get("image_url")
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise LabelFormatError("image_url must be a non-empty string")
    details = value.get("image_details")
    if not isinstance(details, Mapping):
        raise LabelFormatError("image_details must be an object with format, width, height")
    width, height = _pixels(details.get("width"), "width"), _pixels(details.get("height"), "height")
    fmt = details.get("format", "jpg")
    if not isinstance(fmt, str) or len(fmt) > 16:
        raise LabelFormatError("image_details.format must be a short string")
    raw_boxes = value.get("label", [])
    if not isinstance(raw_boxes, list):
        raise LabelFormatError("label must be a list of boxes")
    if len(raw_boxes) > MAX_BOXES:
        raise LabelFormatError(f"more than {MAX_BOXES} boxes")
    boxes = tuple(_box(raw, i) for i, raw in enumerate(raw_boxes))
    return ImageLabels(url, fmt, width, height, boxes)


def _pixels(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise LabelFormatError(f"image_details.{name} must be a size in pixels")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := _PIXELS.match(value)):
        number = int(match.group(1))
    else:
        raise LabelFormatError(f"image_details.{name} must be a size in pixels, e.g. '640px'")
    if not 1 <= number <= 100_000:
        raise LabelFormatError(f"image_details.{name} {number} is not 1..100000")
    return number


def _box(raw: Any, index: int) -> Box:
    if not isinstance(raw, Mapping):
        raise LabelFormatError(f"label[{index}] must be an object")
    name = raw.get("label")
    if not isinstance(name, str) or not name or len(name) > 100:
        raise LabelFormatError(f"label[{index}].label must be a class name (1-100 characters)")
    corners = []
    for key in ("topX", "topY", "bottomX", "bottomY"):
        v = raw.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or v != v or abs(v) > 1e6:
            raise LabelFormatError(f"label[{index}].{key} must be a finite number")
        corners.append(float(v))
    crowd = raw.get("isCrowd", 0)
    if crowd not in (0, 1, True, False):
        raise LabelFormatError(f"label[{index}].isCrowd must be 0 or 1")
    x0, y0, x1, y1 = corners
    return Box(name, x0, y0, x1, y1, is_crowd=int(crowd))


def read_annotations(path: Path) -> list[ImageLabels]:
    """Every line of an annotations file (blank lines skipped)."""
    labels = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    labels.append(parse_line(line))
                except LabelFormatError as exc:
                    raise LabelFormatError(f"{Path(path).name}, line {number}: {exc}") from None
    return labels


def write_annotations(path: Path, labels: Iterable[ImageLabels]) -> int:
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for item in labels:
            out.write(item.line() + "\n")
            count += 1
    return count


def write_mltable(folder: Path, annotations_file: str = ANNOTATIONS) -> Path:
    """An ``MLTable`` beside ``annotations_file`` in ``folder``, as AutoML for images reads it:
    JSON lines, ``image_url`` a stream column.

    The same document the ``mltable`` package saves for ``from_json_lines_files`` +
    ``convert_column_types`` (a test holds the two equal and loads ours with ``mltable``), but
    written as YAML here: ``mltable``'s Rust engine (azureml-dataprep-rslex) posts telemetry to
    Application Insights on every call, and in a process that has imported TensorFlow that
    client's clean-up calls TensorFlow's BoringSSL ``SSL_CTX_free`` on an OpenSSL context and
    the process dies (SIGSEGV), so no worker or recipe process loads it.
    """
    import yaml

    table = {
        "paths": [{"file": annotations_file}],
        "transformations": [
            {
                "read_json_lines": {
                    "encoding": "utf8",
                    "include_path_column": False,
                    "invalid_lines": "error",
                    "partition_size": MLTABLE_PARTITION_BYTES,
                    "path_column": "Path",
                }
            },
            {"convert_column_types": [{"column_type": "stream_info", "columns": "image_url"}]},
        ],
        "type": "mltable",
    }
    path = Path(folder) / MLTABLE
    path.write_text(yaml.safe_dump(table, sort_keys=False), encoding="utf-8")
    return path


def read_classes(folder: Path) -> list[str]:
    return list(json.loads((Path(folder) / CLASSES_JSON).read_text())["classes"])


def write_classes(folder: Path, classes: Sequence[str]) -> None:
    (Path(folder) / CLASSES_JSON).write_text(json.dumps({"classes": list(classes)}, indent=2))
