"""Aggregation: folders of labelled images -> one validated, resized image data set.

Layout rule: **an image's label is the name of the folder that holds it**, and that folder sits
either directly in ``raw_dir`` or one level below it::

    raw_dir/<label>/<image>                 e.g. cat/0001.jpg
    raw_dir/<group>/<label>/<image>         e.g. 2024-06-batch/cat/0001.jpg

The optional group level lets new data arrive as a new folder (one per upload or source) that
merges into the same labels: ``a/cat/x.jpg`` and ``b/cat/y.jpg`` are both ``cat``. Both depths
may be mixed. Images are ``.jpg``, ``.jpeg`` and ``.png`` files (any letter case; the content
decides the format). Hidden files and folders (names starting with ".") are skipped; any other
file is ignored and counted in ``details["ignored_files"]`` by extension (README files, label
CSVs, ``Thumbs.db`` ... are common in image uploads and harmless).

Each of these raises ``DataValidationError`` naming the file or folder (relative to
``raw_dir``):

- an image directly in ``raw_dir`` or nested deeper than ``<group>/<label>/``;
- a folder that holds images both directly and in subfolders (label or group?);
- a folder with no image below it, e.g. an empty label folder or one whose images all have an
  unsupported extension (``.webp``, ``.tif`` ...), which would otherwise drop a class silently;
- a file Pillow cannot verify and decode (corrupt, truncated, not an image);
- fewer than two labels, or no image at all.

Every image is decoded once here (EXIF orientation applied, transparency flattened onto white),
converted to RGB, resized to ``image_size`` x ``image_size`` (stretched, aspect ratio not kept)
and written as PNG to ``images/<same folders>/<name>.png``, so the split and train stages only
read small, uniform files. See ``dataset.py`` for the output format.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from recipes.base import DatasetSummary, RecipeContext, RecipeParams
from recipes.image_classification.dataset import (
    IMAGES_DIR,
    LABELS_FILE,
    MLTABLE_FILE,
    Example,
    write_examples,
    write_metadata,
)
from recipes.image_classification.params import coerce_params
from shared.errors import ConfigurationError, DataValidationError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MIN_LABELS = 2

# A minimal Azure ML table over the index. Paths are relative to the data set folder, so an
# Azure ML job mounts the folder and joins them itself (no stream_info column conversion).
MLTABLE = """\
# Azure ML table: the aggregated image data set, one JSON line per image.
$schema: https://azuremlschemas.azureedge.net/latest/MLTable.schema.json
type: mltable
paths:
  - file: ./labels.jsonl
transformations:
  - read_json_lines:
      encoding: utf8
      invalid_lines: error
      include_path_column: false
"""

log = logging.getLogger(__name__)


def aggregate(
    raw_dir: Path, out_dir: Path, params: RecipeParams, ctx: RecipeContext | None = None
) -> DatasetSummary:
    p = coerce_params(params)
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    found, ignored = find_images(raw_dir)
    labels = Counter(label for _, label in found)
    if len(labels) < MIN_LABELS:
        named = ", ".join(repr(label) for label in sorted(labels)) or "none"
        raise DataValidationError(
            f"need images of at least {MIN_LABELS} labels (one folder per label), "
            f"found {len(labels)}: {named}"
        )

    pillow = _pillow()
    examples = [
        Example(path=target, label=label, source=rel.as_posix())
        for (rel, label), target in zip(found, _targets([rel for rel, _ in found]), strict=True)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in sorted({(out_dir / e.path).parent for e in examples}):
        folder.mkdir(parents=True, exist_ok=True)
    _convert_all(
        pillow,
        [(raw_dir / e.source, out_dir / e.path, e.source) for e in examples if e.source],
        p.image_size,
    )

    write_examples(out_dir / LABELS_FILE, examples)
    (out_dir / MLTABLE_FILE).write_text(MLTABLE)
    label_counts = {label: labels[label] for label in sorted(labels)}
    ignored_counts = dict(sorted(ignored.items()))
    write_metadata(
        out_dir,
        {
            "image_size": p.image_size,
            "format": "png",
            "mode": "RGB",
            "images": len(examples),
            "labels": label_counts,
        },
    )
    if ignored:
        log.warning("ignored %d non-image file(s): %s", sum(ignored.values()), ignored_counts)
    return DatasetSummary(
        rows=len(examples),
        # The index files; the images are listed in labels.jsonl (a summary travels in a
        # message and must stay small however many images there are).
        files=[LABELS_FILE, MLTABLE_FILE, "dataset.json"],
        details={
            "labels": label_counts,
            "image_size": p.image_size,
            "ignored_files": sum(ignored.values()),
            "ignored_extensions": ignored_counts,
        },
    )


def find_images(raw_dir: Path) -> tuple[list[tuple[PurePosixPath, str]], Counter[str]]:
    """(relative path, label) of every image in path order, and ignored files by extension."""
    if not raw_dir.is_dir():
        raise DataValidationError(f"raw data folder {raw_dir} does not exist")
    images: list[tuple[PurePosixPath, str]] = []
    ignored: Counter[str] = Counter()
    folders: set[PurePosixPath] = set()
    direct_images: set[PurePosixPath] = set()  # folders that hold an image themselves
    with_images: set[PurePosixPath] = set()  # folders with an image anywhere below them
    for path in sorted(raw_dir.rglob("*"), key=lambda f: f.relative_to(raw_dir).as_posix()):
        rel = PurePosixPath(path.relative_to(raw_dir).as_posix())
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_dir():
            folders.add(rel)
            continue
        if not path.is_file():
            continue
        if rel.suffix.lower() not in IMAGE_EXTENSIONS:
            ignored[rel.suffix.lower() or "(no extension)"] += 1
            continue
        if len(rel.parts) == 1:
            raise DataValidationError(
                "image is not in a label folder; expected <label>/<image> or "
                "<group>/<label>/<image>",
                file=str(rel),
            )
        if len(rel.parts) > 3:
            raise DataValidationError(
                "image is nested too deeply; expected <label>/<image> or <group>/<label>/<image>",
                file=str(rel),
            )
        images.append((rel, rel.parts[-2]))
        direct_images.add(rel.parent)
        with_images.update(rel.parents)

    for folder in sorted(folders, key=str):
        if folder not in with_images:
            raise DataValidationError(
                f"folder has no {'/'.join(IMAGE_EXTENSIONS)} image; an empty label folder, or "
                "images in an unsupported format",
                file=f"{folder}/",
            )
        if folder in direct_images and any(sub.parent == folder for sub in direct_images):
            raise DataValidationError(
                "folder holds images directly and in subfolders; put images either in "
                "<label>/ or in <group>/<label>/",
                file=f"{folder}/",
            )
    if not images:
        raise DataValidationError(
            f"no {'/'.join(IMAGE_EXTENSIONS)} images found in the raw data "
            f"({sum(ignored.values())} other file(s) ignored)"
        )
    return images, ignored


def _targets(sources: Sequence[PurePosixPath]) -> list[str]:
    """``images/<folders>/<stem>.png`` per source; ``a.jpg`` next to ``a.png`` -> ``a-jpg.png``."""
    taken: set[str] = set()
    targets = []
    for rel in sources:
        folder = PurePosixPath(IMAGES_DIR, *rel.parent.parts)
        target = (folder / f"{rel.stem}.png").as_posix()
        if target in taken:
            target = (folder / f"{rel.stem}-{rel.suffix.lstrip('.').lower()}.png").as_posix()
        counter = 1
        while target in taken:
            counter += 1
            target = (folder / f"{rel.stem}-{counter}.png").as_posix()
        taken.add(target)
        targets.append(target)
    return targets


def _pillow() -> ModuleType:
    try:
        import PIL.Image
        import PIL.ImageOps
    except ImportError as exc:
        raise ConfigurationError(
            "the image_classification recipe needs Pillow: install retrainer[image-classification]"
        ) from exc
    return PIL


def _convert_all(pillow: ModuleType, jobs: list[tuple[Path, Path, str]], size: int) -> None:
    """Converts in threads (Pillow releases the GIL while decoding and resizing); the first
    bad image in path order is reported, and the remaining work is cancelled."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aggregate") as pool:
        futures: list[Future[None]] = [
            pool.submit(convert_image, pillow, source, target, size, rel)
            for source, target, rel in jobs
        ]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def convert_image(pillow: ModuleType, source: Path, target: Path, size: int, rel: str) -> None:
    """Verify, decode, orient, flatten to RGB, resize to ``size`` x ``size``, save as PNG."""
    image_module: Any = pillow.Image
    try:
        with image_module.open(source) as image:
            image.verify()
        with image_module.open(source) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
            oriented = pillow.ImageOps.exif_transpose(image)
            rgb = _flatten_to_rgb(image_module, oriented)
            resized = rgb.resize((size, size), image_module.Resampling.BILINEAR)
    except Exception as exc:
        # Pillow raises many types for bad files (UnidentifiedImageError/OSError, SyntaxError,
        # ValueError, DecompressionBombError, struct.error ...); all mean "not a usable image".
        reason = str(exc) or type(exc).__name__
        raise DataValidationError(f"unreadable image: {reason}", file=rel) from exc
    resized.save(target, format="PNG", compress_level=1)


def _flatten_to_rgb(image_module: Any, image: Any) -> Any:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = image_module.new("RGBA", rgba.size, (255, 255, 255, 255))
    return image_module.alpha_composite(background, rgba).convert("RGB")
