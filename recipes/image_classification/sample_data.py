"""Synthetic labelled images for demos and tests: three classes told apart by colour and shape.

- ``circle``: a reddish disc;
- ``square``: a greenish filled square;
- ``stripes``: bluish horizontal stripes across a band.

Each image is 64 x 64 RGB with a random light background, random position, size and shade and
pixel noise; one in four is saved as JPEG, the rest as PNG. Written as
``<label>/<label>_<nnn>.png|jpg`` (20 per label by default). Deterministic for a seed.

Command line::

    python -m recipes.image_classification OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LABELS = ("circle", "square", "stripes")
IMAGES_PER_LABEL = 20
SIZE = 64
JPEG_EVERY = 4

_BASE_COLOURS = {"circle": (200, 40, 40), "square": (40, 170, 60), "stripes": (40, 70, 200)}


def write_sample_data(
    out_dir: Path, seed: int = 0, images_per_label: int = IMAGES_PER_LABEL
) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    for label in LABELS:
        folder = out_dir / label
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(images_per_label):
            background = tuple(int(v) for v in rng.integers(190, 250, size=3))
            image = Image.new("RGB", (SIZE, SIZE), background)
            colour = tuple(
                int(np.clip(c + rng.integers(-35, 36), 0, 255)) for c in _BASE_COLOURS[label]
            )
            _draw(ImageDraw.Draw(image), label, colour, background, rng)
            pixels = np.asarray(image, dtype=np.int16) + rng.normal(0, 8, (SIZE, SIZE, 3))
            noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
            stem = f"{label}_{number:03d}"
            if number % JPEG_EVERY == JPEG_EVERY - 1:
                noisy.save(folder / f"{stem}.jpg", format="JPEG", quality=90)
            else:
                noisy.save(folder / f"{stem}.png", format="PNG")


def _draw(draw: Any, label: str, colour: tuple[int, ...], background: Any, rng: Any) -> None:
    extent = int(rng.integers(26, 48))
    left = int(rng.integers(2, SIZE - extent - 2))
    top = int(rng.integers(2, SIZE - extent - 2))
    box = (left, top, left + extent, top + extent)
    if label == "circle":
        draw.ellipse(box, fill=colour)
    elif label == "square":
        draw.rectangle(box, fill=colour)
    else:
        stripe = int(rng.integers(3, 6))
        for y in range(top, top + extent, 2 * stripe):
            draw.rectangle((2, y, SIZE - 3, min(y + stripe - 1, top + extent)), fill=colour)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="folder to write the label folders into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-label", type=int, default=IMAGES_PER_LABEL)
    args = parser.parse_args(argv)
    write_sample_data(args.out_dir, args.seed, args.per_label)
    print(f"wrote {args.per_label * len(LABELS)} sample images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
