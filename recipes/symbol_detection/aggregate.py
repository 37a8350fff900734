"""Aggregation: per-image label files -> one ``annotations.jsonl`` + ``MLTable`` for AutoML.

Reads ``<images_dir>/*.jpg|jpeg`` and ``<labels_dir>/*.jsonl`` (each line one image's labels;
``load-zip`` writes one file per image) of the run's data prefix. Each ``image_url`` becomes
the image's absolute datastore URI (``datastore`` set: Azure ML reads the images where they
are) or, for local runs, ``images/<file>`` with the images copied into the data set, which is
then self-contained. ``image_details`` come from the image itself (format, width, height).

Validation rules (``on_invalid``): a label for a missing image, an image without a label, a
box outside [0, 1] or of zero area, an unknown class, an unreadable label line, a second label
for one image. ``error``: the stage fails naming how many of each and the first files;
``warn``: the image (or the box) is dropped and counted in ``validation.json`` and the stage's
details.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.symbol_detection.dataset import (
    ANNOTATIONS,
    CLASSES_JSON,
    CLASSES_TXT,
    DATASET_JSON,
    IMAGE_SUFFIXES,
    IMAGES,
    MLTABLE,
    ImageLabels,
    LabelFormatError,
    parse_line,
    write_annotations,
    write_classes,
    write_mltable,
)
from recipes.symbol_detection.params import SymbolDetectionParams, coerce_params
from shared.errors import DataValidationError

VALIDATION_JSON = "validation.json"
RULES = (
    "label_without_image",
    "image_without_label",
    "unreadable_label",
    "duplicate_label",
    "box_outside_unit_square",
    "box_zero_area",
    "unknown_class",
)
EXAMPLES_PER_RULE = 5


@dataclass
class Findings:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, rule: str, where: str) -> None:
        self.counts[rule] += 1
        shown = self.examples.setdefault(rule, [])
        if len(shown) < EXAMPLES_PER_RULE:
            shown.append(where)

    def describe(self) -> str:
        return "; ".join(
            f"{rule}: {self.counts[rule]} (e.g. {', '.join(self.examples[rule])})"
            for rule in RULES
            if self.counts[rule]
        )


def aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    p = coerce_params(params)
    ctx = ctx or RecipeContext()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    images_dir, labels_dir = raw_dir / p.images_dir, raw_dir / p.labels_dir
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            raise DataValidationError(
                f"no {folder.name}/ folder in the data (found: "
                f"{sorted(x.name for x in raw_dir.iterdir())[:10] if raw_dir.is_dir() else []})",
                file=folder.name,
            )
    images = {
        f.name: f
        for f in sorted(images_dir.iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    }
    if len(images) > p.max_images:
        raise DataValidationError(
            f"{len(images)} images; at most max_images={p.max_images}", file=p.images_dir
        )
    known = _known_classes(p, labels_dir)
    findings = Findings()
    labelled: dict[str, ImageLabels] = {}
    for label_file in sorted(labels_dir.glob("*.jsonl")):
        ctx.check_cancelled()
        where = f"{p.labels_dir}/{label_file.name}"
        for item in _read_label_file(label_file, where, findings):
            name = item.file_name
            if name not in images:
                findings.add("label_without_image", f"{where} ({name})")
            elif name in labelled:
                findings.add("duplicate_label", f"{where} ({name})")
            else:
                labelled[name] = item
    for name in images:
        if name not in labelled:
            findings.add("image_without_label", f"{p.images_dir}/{name}")
    kept: list[ImageLabels] = []
    for name in sorted(labelled):
        item = labelled[name]
        kept_boxes = []
        for index, box in enumerate(item.boxes):
            where = f"{name} box {index}"
            if not box.inside_unit_square:
                findings.add("box_outside_unit_square", where)
            elif not box.has_area:
                findings.add("box_zero_area", where)
            elif known is not None and box.label not in known:
                findings.add("unknown_class", f"{where} ({box.label!r})")
            else:
                kept_boxes.append(box)
        width, height = _image_size(images[name])
        url = _image_url(p, name)
        kept.append(ImageLabels(url, "jpg", width, height, tuple(kept_boxes)))
    if findings.counts and p.on_invalid == "error":
        raise DataValidationError(
            f"invalid labels ({findings.describe()}); fix them, or pass on_invalid='warn' to "
            "drop them and count them"
        )
    if not kept:
        raise DataValidationError("no labelled images left to train on", file=p.labels_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_annotations(out_dir / ANNOTATIONS, kept)
    write_mltable(out_dir)
    per_class = Counter(box.label for item in kept for box in item.boxes)
    classes = list(known) if known is not None else sorted(per_class)
    write_classes(out_dir, classes)
    if p.datastore is None:
        (out_dir / IMAGES).mkdir(exist_ok=True)
        for item in kept:
            _copy(images[item.file_name], out_dir / IMAGES / item.file_name)
    validation = {"on_invalid": p.on_invalid, "counts": dict(findings.counts), **findings.examples}
    (out_dir / VALIDATION_JSON).write_text(json.dumps(validation, indent=2))
    boxes = sum(per_class.values())
    facts = {
        "images": len(kept),
        "boxes": boxes,
        "classes": classes,
        "per_class": dict(sorted(per_class.items())),
        "image_url": "datastore" if p.datastore else "relative",
        "dropped": dict(findings.counts),
    }
    (out_dir / DATASET_JSON).write_text(json.dumps(facts, indent=2))
    files = [ANNOTATIONS, MLTABLE, CLASSES_JSON, DATASET_JSON, VALIDATION_JSON]
    return DatasetSummary(
        rows=len(kept),
        files=files + ([f"{IMAGES}/"] if p.datastore is None else []),
        details=facts,
        history_record={
            "images": len(kept),
            "boxes": boxes,
            "warnings": sum(findings.counts.values()),
            **{f"boxes_{name}": per_class.get(name, 0) for name in classes[:50]},
        },
    )


def _known_classes(p: SymbolDetectionParams, labels_dir: Path) -> tuple[str, ...] | None:
    if p.classes is not None:
        return p.classes
    listed = labels_dir / CLASSES_TXT
    if listed.is_file():
        names = [n.strip() for n in listed.read_text(errors="replace").splitlines() if n.strip()]
        if names:
            return tuple(names[:1000])
    return None


def _read_label_file(path: Path, where: str, findings: Findings) -> list[ImageLabels]:
    if path.stat().st_size > 64 * 1024 * 1024:
        findings.add("unreadable_label", f"{where} (larger than 64 MiB)")
        return []
    items = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        findings.add("unreadable_label", f"{where} (not UTF-8)")
        return []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(parse_line(line))
        except LabelFormatError as exc:
            findings.add("unreadable_label", f"{where} line {number}: {exc}")
    return items


def _image_url(p: SymbolDetectionParams, name: str) -> str:
    if p.datastore is None:
        return f"{IMAGES}/{name}"
    workspace = f"{p.workspace}/" if p.workspace else ""
    path = "/".join(part for part in (p.datastore_path, p.images_dir, name) if part)
    return f"azureml://{workspace}datastores/{p.datastore}/paths/{path}"


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:  # Pillow raises many types for a broken image
        raise DataValidationError(f"not a readable image: {exc}", file=path.name) from None
    return int(width), int(height)


def _copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
