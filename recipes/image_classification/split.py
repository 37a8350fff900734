"""Split: the aggregated data set -> a self-contained train/validation folder.

Stratified by label: each label's images are split at random with ``validation_fraction`` going
to validation and at least one image on each side (``recipes.splitting.random_split`` per
label, seeded from ``seed`` and the label), so every class is both trained on and evaluated. A
label therefore needs two or more images. The images referenced by either side are hard-linked
(copied where links are not possible) into the split folder with their relative paths, because
the train stage receives only this folder.
"""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.image_classification.dataset import (
    DATASET_FILE,
    LABELS_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    Example,
    read_examples,
    read_metadata,
    write_examples,
    write_metadata,
)
from recipes.image_classification.params import coerce_params
from shared.errors import DataValidationError


def split(
    dataset_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    import pandas as pd

    from recipes.splitting import SplitError, random_split

    p = coerce_params(params)
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    metadata = read_metadata(dataset_dir)
    examples = read_examples(dataset_dir, LABELS_FILE)
    frame = pd.DataFrame({"label": [e.label for e in examples]})

    in_validation = [False] * len(examples)
    for label, rows in frame.groupby("label", sort=True).groups.items():
        try:
            sides = random_split(frame.loc[rows], p.validation_fraction, _label_seed(p.seed, label))
        except SplitError as exc:
            raise DataValidationError(
                f"label {label!r} has {len(rows)} image(s); a stratified split needs at "
                f"least 2 per label ({exc})",
                file=LABELS_FILE,
            ) from exc
        for position in sides.validation.index:
            in_validation[int(position)] = True

    train = [e for e, v in zip(examples, in_validation, strict=True) if not v]
    validation = [e for e, v in zip(examples, in_validation, strict=True) if v]

    out_dir.mkdir(parents=True, exist_ok=True)
    for example in examples:
        _link_or_copy(dataset_dir / example.path, out_dir / example.path)
    write_examples(out_dir / TRAIN_FILE, train)
    write_examples(out_dir / VALIDATION_FILE, validation)
    counts = {
        "train": _counts(train),
        "validation": _counts(validation),
    }
    write_metadata(
        out_dir,
        {
            **metadata,
            "split": {
                "strategy": "stratified random",
                "validation_fraction": p.validation_fraction,
                "seed": p.seed,
                **counts,
            },
        },
    )
    return DatasetSummary(
        rows=len(examples),
        files=[TRAIN_FILE, VALIDATION_FILE, DATASET_FILE],
        details={
            "strategy": "stratified random",
            "train_rows": len(train),
            "validation_rows": len(validation),
            "labels": counts,
        },
    )


def _label_seed(seed: int, label: object) -> int:
    """A seed per label, so same-sized labels do not all hold out the same positions."""
    return seed * 2**32 + zlib.crc32(str(label).encode("utf-8"))


def _counts(examples: list[Example]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.label] = counts.get(example.label, 0) + 1
    return dict(sorted(counts.items()))


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not supported
        shutil.copy2(source, target)
