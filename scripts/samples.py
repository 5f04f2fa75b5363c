"""Draw the sample images the API serves under ``/samples/`` (``python -m scripts.samples``).

They come from the embedded model's own world (``model.shapes``), so a first caption of one is
exactly the caption in ``api/samples/captions.json``. The API only serves the files; it never
imports the drawing code (nor PIL), so they are committed and a test redraws them to check.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from model.shapes import ShapeSpec, draw_shape

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "api" / "samples"
#: File name -> what it shows. Seeds are fixed, so every run draws the same pixels.
SAMPLES: dict[str, ShapeSpec] = {
    "red-circle.png": ShapeSpec("circle", "red"),
    "green-square.png": ShapeSpec("square", "green"),
    "blue-triangle-on-black.png": ShapeSpec("triangle", "blue", "large", "black"),
    "small-yellow-circle-on-black.png": ShapeSpec("circle", "yellow", "small", "black"),
}
_IMAGE_SIZE = 160


def draw_sample(name: str) -> Image.Image:
    """The image of sample ``name``."""
    spec = SAMPLES[name]
    return draw_shape(
        spec.shape, spec.colour, spec.size, spec.background, image_size=_IMAGE_SIZE, rng=random.Random(name)
    )


def write_samples(folder: Path = SAMPLES_DIR) -> None:
    """Write every sample PNG and ``captions.json`` (file name -> expected caption) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SAMPLES:
        draw_sample(name).save(folder / name, optimize=True)
    captions = {name: spec.caption for name, spec in SAMPLES.items()}
    (folder / "captions.json").write_text(json.dumps(captions, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_samples()
