"""Synthetic engineering drawings with symbol boxes, as the team's zip holds them.

Each drawing is white paper with a frame, pipes (horizontal and vertical lines), text-like
noise (rows of short strokes) and 3 to 8 symbols of five classes — valve (a bow-tie), pump
(a circle holding a triangle), circle (an instrument bubble), arrow (a line with a head, four
directions), tank (a rounded rectangle) — 20 to 56 pixels across, some overlapping another,
some touching the edge. ``write_sample_zip`` writes the zip ``load-zip`` takes (JPEG images,
one ``[n, 5]`` ``.npy`` label array each, ``classes.txt``); ``write_sample_data`` writes the
raw layout the recipe reads (what ``load-zip`` would upload).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLASSES = ("valve", "pump", "circle", "arrow", "tank")
SIZES = ((256, 256), (320, 240), (288, 224))
SAMPLE_IMAGES = 60
MIN_SYMBOL, MAX_SYMBOL = 20, 56


def draw_drawing(rng: Any, size: tuple[int, int]) -> tuple[Any, list[list[float]]]:
    """One drawing (a PIL RGB image) and its boxes: ``[class_id, xmin, ymin, xmax, ymax]``."""
    from PIL import Image, ImageDraw

    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([2, 2, width - 3, height - 3], outline=(40, 40, 40), width=1)
    for _ in range(int(rng.integers(2, 6))):  # pipes
        gray = int(rng.integers(0, 90))
        if rng.random() < 0.5:
            y = int(rng.integers(8, height - 8))
            draw.line(
                [int(rng.integers(0, width // 2)), y, int(rng.integers(width // 2, width)), y],
                fill=(gray,) * 3,
                width=int(rng.integers(1, 3)),
            )
        else:
            x = int(rng.integers(8, width - 8))
            draw.line(
                [x, int(rng.integers(0, height // 2)), x, int(rng.integers(height // 2, height))],
                fill=(gray,) * 3,
                width=int(rng.integers(1, 3)),
            )
    for _ in range(int(rng.integers(2, 5))):  # text-like noise: rows of short strokes
        x, y = int(rng.integers(4, width - 60)), int(rng.integers(4, height - 10))
        for _ in range(int(rng.integers(4, 14))):
            w, h = int(rng.integers(2, 6)), int(rng.integers(4, 8))
            draw.rectangle([x, y, x + w, y + h], outline=(30, 30, 30))
            x += w + int(rng.integers(2, 5))
            if x > width - 8:
                break
    boxes: list[list[float]] = []
    for _ in range(int(rng.integers(3, 9))):
        class_id = int(rng.integers(len(CLASSES)))
        w = int(rng.integers(MIN_SYMBOL, MAX_SYMBOL + 1))
        h = (
            w
            if CLASSES[class_id] in ("valve", "pump", "circle")
            else int(rng.integers(MIN_SYMBOL, MAX_SYMBOL + 1))
        )
        if CLASSES[class_id] == "valve":
            h = max(MIN_SYMBOL, w * 2 // 3)
        x0, y0 = _place(rng, boxes, (w, h), (width, height))
        _draw_symbol(draw, rng, CLASSES[class_id], x0, y0, w, h)
        boxes.append([class_id, x0, y0, x0 + w, y0 + h])
    return image, boxes


def _place(
    rng: Any, boxes: Sequence[Sequence[float]], size: tuple[int, int], bounds: tuple[int, int]
) -> tuple[int, int]:
    (w, h), (width, height) = size, bounds
    roll = rng.random()
    if boxes and roll < 0.25:  # overlapping an earlier symbol
        other = boxes[int(rng.integers(len(boxes)))]
        x0 = int(other[1] + rng.uniform(0.3, 0.7) * (other[3] - other[1]))
        y0 = int(other[2] + rng.uniform(-0.3, 0.3) * (other[4] - other[2]))
    elif roll < 0.45:  # touching an edge
        edge = int(rng.integers(4))
        x0 = int(rng.integers(0, width - w))
        y0 = int(rng.integers(0, height - h))
        x0, y0 = ((0, y0), (width - w, y0), (x0, 0), (x0, height - h))[edge]
    else:
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    return min(max(x0, 0), width - w), min(max(y0, 0), height - h)


def _draw_symbol(draw: Any, rng: Any, name: str, x0: int, y0: int, w: int, h: int) -> None:
    ink = (0, 0, 0)
    x1, y1 = x0 + w - 1, y0 + h - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    line = 2 if w > 32 else 1
    if name == "valve":
        draw.polygon([(x0, y0), (cx, cy), (x0, y1)], outline=ink, width=line)
        draw.polygon([(x1, y0), (cx, cy), (x1, y1)], outline=ink, width=line)
    elif name == "pump":
        draw.ellipse([x0, y0, x1, y1], outline=ink, width=line)
        r = w / 4
        draw.polygon([(cx - r, cy - r), (cx + r, cy), (cx - r, cy + r)], fill=ink)
    elif name == "circle":
        draw.ellipse([x0, y0, x1, y1], outline=ink, width=line)
        draw.line([x0 + w * 0.15, cy, x1 - w * 0.15, cy], fill=ink, width=1)
    elif name == "arrow":
        direction = int(rng.integers(4))
        head = min(w, h) / 2.5
        if direction in (0, 1):  # horizontal: a shaft through the middle, head at one end
            tip, tail = (x1, x0) if direction == 0 else (x0, x1)
            back = tip - head if direction == 0 else tip + head
            draw.line([tail, cy, tip, cy], fill=ink, width=line)
            draw.polygon([(tip, cy), (back, y0), (back, y1)], fill=ink)
        else:
            tip, tail = (y1, y0) if direction == 2 else (y0, y1)
            back = tip - head if direction == 2 else tip + head
            draw.line([cx, tail, cx, tip], fill=ink, width=line)
            draw.polygon([(cx, tip), (x0, back), (x1, back)], fill=ink)
    else:  # tank
        draw.rounded_rectangle([x0, y0, x1, y1], radius=min(w, h) // 4, outline=ink, width=line)


def write_sample_zip(
    path: Path,
    *,
    images: int = SAMPLE_IMAGES,
    seed: int = 0,
    name_prefix: str = "drawing",
    classes_file: bool = True,
) -> Path:
    """The zip ``load-zip`` takes: ``<prefix>-NNNN.jpg`` + ``<prefix>-NNNN.npy`` per drawing
    (float32 ``[n, 5]``: class_id, xmin, ymin, xmax, ymax in pixels) and ``classes.txt``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if classes_file:
            archive.writestr("classes.txt", "".join(f"{name}\n" for name in CLASSES))
        for index in range(images):
            size = SIZES[int(rng.integers(len(SIZES)))]
            image, boxes = draw_drawing(rng, size)
            jpeg = io.BytesIO()
            image.save(jpeg, format="JPEG", quality=90)
            stem = f"{name_prefix}-{index:04d}"
            archive.writestr(f"images/{stem}.jpg", jpeg.getvalue())
            labels = io.BytesIO()
            np.save(labels, np.asarray(boxes, dtype="float32").reshape(-1, 5), allow_pickle=False)
            archive.writestr(f"labels/{stem}.npy", labels.getvalue())
    return path


def write_sample_data(out_dir: Path, seed: int, *, images: int = SAMPLE_IMAGES) -> None:
    """The raw layout (``images/``, ``labels/``) of a sample zip, as ``load-zip`` uploads it."""
    from recipes.symbol_detection.loader import convert_zip

    with tempfile.TemporaryDirectory() as tmp:
        archive = write_sample_zip(Path(tmp) / "sample.zip", images=images, seed=seed)
        convert_zip(archive, Path(out_dir))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a sample zip of synthetic drawings")
    parser.add_argument("zip", type=Path, help="the zip file to write")
    parser.add_argument("--images", type=int, default=SAMPLE_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="drawing", help="file name prefix of the drawings")
    args = parser.parse_args(argv)
    write_sample_zip(args.zip, images=args.images, seed=args.seed, name_prefix=args.prefix)
    print(f"wrote {args.images} drawings to {args.zip}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
