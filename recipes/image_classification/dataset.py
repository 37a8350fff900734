"""The on-disk format shared by the stages: image files plus JSON-lines indexes.

An aggregated data set (and each split) is a self-contained folder::

    labels.jsonl          one line per image: {"path": "images/...png", "label": "...", ...}
    images/...            RGB PNGs, all image_size x image_size
    dataset.json          {"image_size": ..., "labels": {label: count}, ...}
    MLTable               (aggregate only) Azure ML table over labels.jsonl

A split folder has ``train.jsonl`` and ``validation.jsonl`` instead of ``labels.jsonl``, and the
images they reference. ``path`` is relative to the folder holding the index file (POSIX
separators); absolute paths and ``..`` are rejected so an index cannot reach outside it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from shared.errors import DataValidationError

LABELS_FILE = "labels.jsonl"
TRAIN_FILE = "train.jsonl"
VALIDATION_FILE = "validation.jsonl"
DATASET_FILE = "dataset.json"
MLTABLE_FILE = "MLTable"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class Example:
    path: str  # relative to the folder of the index file
    label: str
    source: str | None = None  # the raw file it was made from, relative to the raw folder

    def as_json(self) -> dict[str, str]:
        record = {"path": self.path, "label": self.label}
        if self.source is not None:
            record["source"] = self.source
        return record


def write_examples(path: Path, examples: Iterable[Example]) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example.as_json(), ensure_ascii=False) + "\n")
            count += 1
    return count


def read_examples(directory: Path, name: str, *, check_files: bool = True) -> list[Example]:
    """The examples of ``directory/name``; errors name the index file and its 1-based line.

    Blank lines are ignored. With ``check_files`` every referenced image must exist.
    """
    path = Path(directory) / name
    if not path.is_file():
        raise DataValidationError(f"expected {name} in the stage input", file=name)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(f"not UTF-8 text: {exc.reason}", file=name) from exc
    examples = []
    for row, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataValidationError(f"not a JSON object: {exc.msg}", file=name, row=row) from exc
        example = _example(record, name, row)
        if check_files and not (directory / example.path).is_file():
            raise DataValidationError(
                f"image {example.path!r} is missing from the data set", file=name, row=row
            )
        examples.append(example)
    if not examples:
        raise DataValidationError("no images listed", file=name)
    return examples


def _example(record: Any, name: str, row: int) -> Example:
    if not isinstance(record, Mapping):
        raise DataValidationError("not a JSON object", file=name, row=row)
    for key in ("path", "label"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise DataValidationError(f"{key!r} must be a non-empty string", file=name, row=row)
    path = PurePosixPath(record["path"])
    if path.is_absolute() or ".." in path.parts or "\\" in record["path"]:
        raise DataValidationError(
            f"path {record['path']!r} must be relative to the data set folder, without '..'",
            file=name,
            row=row,
        )
    source = record.get("source")
    return Example(
        path=path.as_posix(),
        label=record["label"],
        source=source if isinstance(source, str) else None,
    )


def read_metadata(directory: Path) -> dict[str, Any]:
    path = Path(directory) / DATASET_FILE
    if not path.is_file():
        raise DataValidationError(f"expected {DATASET_FILE} in the stage input", file=DATASET_FILE)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"not a JSON document: {exc}", file=DATASET_FILE) from exc
    if not isinstance(content, dict):
        raise DataValidationError("not a JSON object", file=DATASET_FILE)
    return content


def write_metadata(directory: Path, content: Mapping[str, Any]) -> None:
    (Path(directory) / DATASET_FILE).write_text(json.dumps(content, indent=2) + "\n")
