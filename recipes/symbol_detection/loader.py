"""A zip of drawings and ``.npy`` labels -> the raw data layout (``images/``, ``labels/``).

The zip (what the engineering-drawings team delivers)::

    classes.txt            optional: one class name per line; line i names class id i
    <any folders>/a.jpg    JPEG images (.jpg or .jpeg); folders are ignored, stems must be unique
    <any folders>/a.npy    the labels of a.jpg: a numeric array of shape [n, 5], one row per
                           box: class_id, xmin, ymin, xmax, ymax, the corners in pixels of the
                           image (origin top-left, x to the right); n may be 0 (shape [0, 5])

becomes ``images/a.jpg`` and ``labels/a.jsonl`` (one line in the AutoML object-detection format,
``image_url`` the file name, boxes divided by the image's width and height) and
``labels/classes.txt``. Boxes are converted as they are: a box outside the image or of zero area
is judged by the aggregation stage (``on_invalid``), not silently clipped here.

Every bound is checked before anything is extracted: entry count, declared sizes (each and
in all), compression ratio; names that are absolute, hold ``..``, a backslash or a drive
letter, and symbolic links refuse the whole archive (``ArchiveError``), as do bytes beyond an
entry's declared size. An ``.npy`` is read without pickles.
"""

from __future__ import annotations

import io
import posixpath
import re
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.symbol_detection.dataset import (
    CLASSES_TXT,
    IMAGE_SUFFIXES,
    IMAGES,
    LABELS,
    MAX_BOXES,
    Box,
    ImageLabels,
)

# Safe in blob names and URIs everywhere.
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
_IGNORED_FOLDERS = ("__MACOSX/",)


class ArchiveError(ValueError):
    """The archive is refused; the message names the entry and the bound."""


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 100_000
    max_total_bytes: int = 8 * 1024**3
    max_entry_bytes: int = 256 * 1024**2
    max_label_bytes: int = 4 * 1024**2
    # Uncompressed / compressed size of one entry; JPEGs and arrays hardly compress.
    max_ratio: float = 200.0
    max_classes: int = 1000


@dataclass
class LoadSummary:
    images: int = 0
    boxes: int = 0
    classes: list[str] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "classes": self.classes,
            "per_class": self.per_class,
            "ignored": self.ignored[:20],
            "ignored_count": len(self.ignored),
        }


def convert_zip(
    zip_path: Path,
    out_dir: Path,
    *,
    classes: Sequence[str] | None = None,
    limits: ZipLimits | None = None,
) -> LoadSummary:
    """Check and convert the archive into ``out_dir/images`` and ``out_dir/labels``.

    ``classes`` names the class ids (overriding the archive's ``classes.txt``); without
    either, class id ``i`` is named ``"i"``. Raises ArchiveError."""
    from PIL import Image

    limits = limits or ZipLimits()
    out_dir = Path(out_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"not a readable zip archive: {exc}") from None
    with archive:
        images, labels, class_entry, ignored = _checked_entries(archive, limits)
        names = list(classes) if classes is not None else None
        if names is None and class_entry is not None:
            names = _read_classes(archive, class_entry, limits)
        unpaired = sorted(set(images) ^ set(labels))
        if unpaired:
            described = ", ".join(
                f"{(images.get(s) or labels[s]).filename} (no {'.npy' if s in images else 'image'})"
                for s in unpaired[:10]
            )
            raise ArchiveError(f"{len(unpaired)} file(s) without their pair: {described}")
        if not images:
            raise ArchiveError("no JPEG images (.jpg, .jpeg) with .npy labels in the archive")
        (out_dir / IMAGES).mkdir(parents=True, exist_ok=True)
        (out_dir / LABELS).mkdir(parents=True, exist_ok=True)
        summary = LoadSummary(ignored=ignored)
        seen_ids: set[int] = set()
        for stem in sorted(images):
            info = images[stem]
            data = _read(archive, info, limits.max_entry_bytes)
            file_name = posixpath.basename(info.filename)
            width, height = _jpeg_size(Image, data, info.filename)
            rows = _read_boxes(_read(archive, labels[stem], limits.max_label_bytes), labels[stem])
            boxes = []
            for class_id, x0, y0, x1, y1 in rows:
                seen_ids.add(class_id)
                name = _class_name(class_id, names, labels[stem].filename)
                boxes.append(Box(name, x0 / width, y0 / height, x1 / width, y1 / height))
                summary.per_class[name] = summary.per_class.get(name, 0) + 1
            (out_dir / IMAGES / file_name).write_bytes(data)
            item = ImageLabels(file_name, "jpg", width, height, tuple(boxes))
            (out_dir / LABELS / f"{stem}.jsonl").write_text(item.line() + "\n")
            summary.images += 1
            summary.boxes += len(boxes)
        summary.classes = names if names is not None else [str(i) for i in sorted(seen_ids)]
        (out_dir / LABELS / CLASSES_TXT).write_text("".join(f"{n}\n" for n in summary.classes))
    return summary


def _checked_entries(
    archive: zipfile.ZipFile, limits: ZipLimits
) -> tuple[dict[str, zipfile.ZipInfo], dict[str, zipfile.ZipInfo], zipfile.ZipInfo | None, list]:
    entries = archive.infolist()
    if len(entries) > limits.max_entries:
        raise ArchiveError(f"{len(entries)} entries; at most {limits.max_entries} are accepted")
    total = 0
    images: dict[str, zipfile.ZipInfo] = {}
    labels: dict[str, zipfile.ZipInfo] = {}
    class_entry: zipfile.ZipInfo | None = None
    ignored: list[str] = []
    for info in entries:
        name = info.filename
        _check_name(name)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"{name!r} is a symbolic link; links are refused")
        if info.is_dir():
            continue
        if info.file_size > limits.max_entry_bytes:
            raise ArchiveError(
                f"{name!r} is {info.file_size} bytes uncompressed; at most "
                f"{limits.max_entry_bytes} per entry"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"more than {limits.max_total_bytes} bytes uncompressed in all (at {name!r})"
            )
        if info.file_size > 1024 * 1024 and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise ArchiveError(
                f"{name!r} expands {info.file_size / max(info.compress_size, 1):.0f}-fold; "
                f"at most {limits.max_ratio:g}-fold (a zip bomb?)"
            )
        if name.startswith(_IGNORED_FOLDERS) or posixpath.basename(name).startswith("."):
            ignored.append(name)
            continue
        base = posixpath.basename(name)
        stem, suffix = posixpath.splitext(base)
        if base == CLASSES_TXT:
            if class_entry is not None:
                raise ArchiveError(f"two {CLASSES_TXT}: {class_entry.filename!r} and {name!r}")
            class_entry = info
            continue
        kind = images if suffix.lower() in IMAGE_SUFFIXES else labels if suffix == ".npy" else None
        if kind is None:
            ignored.append(name)
            continue
        if not _FILE_NAME.match(base):
            raise ArchiveError(
                f"{name!r}: file names must be letters, digits, '.', '_' or '-' (and start "
                "with a letter or digit)"
            )
        if stem in kind:
            raise ArchiveError(f"two files with stem {stem!r}: {kind[stem].filename!r}, {name!r}")
        kind[stem] = info
    return images, labels, class_entry, ignored


def _check_name(name: str) -> None:
    segments = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or re.match(r"^[A-Za-z]:", name)
        or any(s in ("..", ".") for s in segments)
        or any(ord(c) < 32 for c in name)
    ):
        raise ArchiveError(f"entry {name!r} would be written outside the target folder")


def _read(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The entry's bytes, never more than its declared size (nor ``limit``)."""
    bound = min(info.file_size, limit)
    try:
        with archive.open(info) as entry:
            data = entry.read(bound + 1)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ArchiveError(f"{info.filename!r} cannot be read: {exc}") from None
    if len(data) > bound:
        raise ArchiveError(f"{info.filename!r} holds more than {bound} bytes")
    return data


def _read_classes(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ZipLimits) -> list[str]:
    text = _read(archive, info, 1024 * 1024).decode("utf-8", errors="replace")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(names) > limits.max_classes:
        raise ArchiveError(f"{info.filename!r}: 1 to {limits.max_classes} class names")
    if len(set(names)) != len(names) or any(len(n) > 100 for n in names):
        raise ArchiveError(f"{info.filename!r}: class names must be unique, 100 characters at most")
    return names


def _jpeg_size(image_module: Any, data: bytes, name: str) -> tuple[int, int]:
    try:
        with image_module.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise ArchiveError(f"{name!r} is {image.format}, not a JPEG image")
            width, height = image.size
    except ArchiveError:
        raise
    except Exception as exc:  # Pillow raises many types for a broken or hostile image
        raise ArchiveError(f"{name!r} is not a readable image: {exc}") from None
    if width * height > 100_000_000:
        raise ArchiveError(f"{name!r} is {width}x{height} pixels; at most 100 megapixels")
    return width, height


def _read_boxes(data: bytes, info: zipfile.ZipInfo) -> list[tuple[int, float, float, float, float]]:
    import numpy as np

    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArchiveError(
            f"{info.filename!r} is not a .npy array without pickles: {exc}"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        raise ArchiveError(f"{info.filename!r} must hold a numeric array")
    if array.size == 0:
        return []
    if array.ndim == 1 and array.shape[0] == 5:
        array = array.reshape(1, 5)
    if array.ndim != 2 or array.shape[1] != 5:
        raise ArchiveError(
            f"{info.filename!r} has shape {list(array.shape)}; expected [n, 5] rows of "
            "class_id, xmin, ymin, xmax, ymax"
        )
    if array.shape[0] > MAX_BOXES:
        raise ArchiveError(f"{info.filename!r} has {array.shape[0]} boxes; at most {MAX_BOXES}")
    values = array.astype("float64")
    if not np.isfinite(values).all():
        raise ArchiveError(f"{info.filename!r} holds a value that is not a finite number")
    ids = values[:, 0]
    if (ids < 0).any() or (ids != np.round(ids)).any():
        raise ArchiveError(f"{info.filename!r}: class ids must be whole numbers from 0")
    return [(int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4])) for r in values]


def _class_name(class_id: int, names: Sequence[str] | None, where: str) -> str:
    if names is None:
        return str(class_id)
    if class_id >= len(names):
        raise ArchiveError(
            f"{where!r}: class id {class_id} but only {len(names)} classes are named "
            f"({', '.join(names[:10])})"
        )
    return names[class_id]
