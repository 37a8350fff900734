"""Split: the data set -> ``train/`` and ``validation/`` (``annotations.jsonl`` + ``MLTable``).

``use_stratified_split`` off: every image trains (no validation table). On: a shuffled,
seeded stratified k-fold (``stratified_split_n_fold``) whose first fold is the validation set.
Images are stratified by their class composition: each image's stratum is its rarest class
(by box count over the data set; ``(none)`` for an image without boxes), and strata with fewer
than k images are pooled, so every fold sees the rare classes. ``mandatory_train_filenames``
and ``mandatory_val_filenames`` (image file names) are placed first, whatever the split;
names not in the data set are counted in the details. The split folder is self-contained:
``classes.json``, and for local runs the images.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.symbol_detection.dataset import (
    ANNOTATIONS,
    CLASSES_JSON,
    DATASET_JSON,
    IMAGES,
    MLTABLE,
    TRAIN,
    VALIDATION,
    ImageLabels,
    read_annotations,
    write_annotations,
    write_mltable,
)
from recipes.symbol_detection.params import coerce_params
from shared.errors import DataValidationError

NO_BOXES = "(none)"
POOLED = "(pooled)"


def split(
    dataset_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    import pandas as pd

    from recipes.splitting import SplitError, forced_membership, no_split, stratified_kfold_split

    p = coerce_params(params)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    items = {item.file_name: item for item in read_annotations(dataset_dir / ANNOTATIONS)}
    frame = pd.DataFrame({"file_name": sorted(items)})
    k = p.stratified_split_n_fold

    def stratified(rest: pd.DataFrame) -> Any:
        if len(rest) < k:
            raise SplitError(
                f"{len(rest)} image(s) outside the mandatory lists are too few for a "
                f"{k}-fold split; label more images, lower stratified_split_n_fold or set "
                "use_stratified_split=false"
            )
        strata = strata_of([items[name] for name in rest["file_name"]], k)
        return stratified_kfold_split(rest.assign(stratum=strata), "stratum", k, 0, p.seed)

    try:
        sides = forced_membership(
            frame,
            "file_name",
            p.mandatory_train_filenames,
            p.mandatory_val_filenames,
            then_split=stratified if p.use_stratified_split else no_split,
        )
    except SplitError as exc:
        raise DataValidationError(str(exc), file=ANNOTATIONS) from exc
    listed = set(p.mandatory_train_filenames) | set(p.mandatory_val_filenames)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {TRAIN: sides.train["file_name"].tolist()}
    if len(sides.validation):
        tables[VALIDATION] = sides.validation["file_name"].tolist()
    details: dict[str, Any] = {
        "strategy": f"stratified {k}-fold, fold 0" if p.use_stratified_split else "none",
        "seed": p.seed,
        "mandatory_not_found": len(listed - set(items)),
    }
    for table, names in tables.items():
        (out_dir / table).mkdir()
        write_annotations(out_dir / table / ANNOTATIONS, (items[n] for n in names))
        write_mltable(out_dir / table)
        boxes = Counter(box.label for n in names for box in items[n].boxes)
        details[table] = {"images": len(names), "per_class": dict(sorted(boxes.items()))}
    shutil.copyfile(dataset_dir / CLASSES_JSON, out_dir / CLASSES_JSON)
    if (dataset_dir / IMAGES).is_dir():
        (out_dir / IMAGES).mkdir()
        for name in sorted(items):
            _copy(dataset_dir / IMAGES / name, out_dir / IMAGES / name)
    (out_dir / DATASET_JSON).write_text(json.dumps(details, indent=2))
    files = [f"{t}/{f}" for t in tables for f in (ANNOTATIONS, MLTABLE)]
    return DatasetSummary(rows=len(items), files=[*files, CLASSES_JSON], details=details)


def strata_of(items: list[ImageLabels], k: int) -> list[str]:
    """Each image's stratum: its rarest class over ``items`` (``(none)`` without boxes);
    strata with fewer than ``k`` images pooled, and a pool still under ``k`` joined to the
    largest stratum."""
    frequency = Counter(box.label for item in items for box in item.boxes)
    strata = [
        min((box.label for box in item.boxes), key=lambda c: (frequency[c], c))
        if item.boxes
        else NO_BOXES
        for item in items
    ]
    sizes = Counter(strata)
    strata = [s if sizes[s] >= k else POOLED for s in strata]
    sizes = Counter(strata)
    if 0 < sizes[POOLED] < k and len(sizes) > 1:
        largest = max((s for s in sizes if s != POOLED), key=lambda s: (sizes[s], s))
        strata = [largest if s == POOLED else s for s in strata]
    return strata


def _copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
