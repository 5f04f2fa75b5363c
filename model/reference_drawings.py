"""A second drawer of the embedded model's world, independent of the trainer's: the yardstick it is measured on.

The trainer draws with PIL's ``ImageDraw`` (``model.shapes``). This module shares none of its code,
tables or random choices: it paints NumPy masks from pixel-centre coordinates (optionally 4x4
supersampled for anti-aliasing), picks its own named shades of each colour, its own image sizes and
its own spans, within the same rules (README, "The model"):

* span (the longer side of the shape's bounding box) at most 40 % of the image's shorter side for
  "small", at least 60 % for "large";
* the shape wholly inside the image, anywhere; upright, a triangle with its apex up;
* a background at or near pure white or black.

Only the caption's words are shared, since they are what the model must answer.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: Shades a person would call each colour name (CSS-like pure colours and common variants).
SHADES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (204, 0, 0), (230, 40, 40), (200, 30, 50)),
    "green": ((0, 200, 0), (0, 150, 50), (60, 180, 75), (20, 220, 90)),
    "blue": ((0, 0, 255), (30, 90, 200), (65, 105, 225), (20, 60, 160)),
    "yellow": ((255, 255, 0), (255, 215, 0), (240, 220, 40), (250, 235, 90)),
}
#: Near-pure backgrounds of each name.
BACKDROPS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "white": ((255, 255, 255), (248, 248, 245), (240, 240, 240), (250, 245, 235)),
    "black": ((0, 0, 0), (12, 12, 12), (20, 18, 25), (5, 10, 5)),
}
#: Spans, as fractions of the image's shorter side; kept a little inside the rules' limits.
SPANS: dict[str, tuple[float, float]] = {"small": (0.22, 0.4), "large": (0.6, 0.92)}
KINDS = ("circle", "square", "triangle")

_SUBSAMPLES = 4  # per pixel and axis, when anti-aliased


def draw(
    kind: str,
    colour: str,
    size: str,
    backdrop: str,
    rng: np.random.Generator,
    *,
    aspect: float | None = None,
    span: float | None = None,
    centred: bool = False,
) -> Image.Image:
    """One RGB drawing of ``kind`` in ``colour``, of ``size``, on ``backdrop``, at a size and place from ``rng``.

    Args:
        aspect: the image's width / height; ``None``: anything up to 3:1, either way.
        span: the shape's span as a fraction of the shorter side; ``None``: any the size allows.
        centred: the shape's box in the middle of the image rather than anywhere.
    """
    width, height = _image_size(rng, aspect)
    short = min(width, height)
    span_px = (rng.uniform(*SPANS[size]) if span is None else span) * short
    box_height = span_px * rng.uniform(0.8, 1.0) if kind == "triangle" else span_px
    if centred:
        x0, y0 = (width - span_px) / 2, (height - box_height) / 2
    else:
        x0, y0 = rng.uniform(0, width - span_px), rng.uniform(0, height - box_height)
    subsamples = _SUBSAMPLES if rng.random() < 0.5 else 1
    coverage = _coverage(kind, (x0, y0, span_px, box_height), (width, height), subsamples)
    fill = np.array(SHADES[colour][rng.integers(len(SHADES[colour]))], dtype=np.float32)
    back = np.array(BACKDROPS[backdrop][rng.integers(len(BACKDROPS[backdrop]))], dtype=np.float32)
    pixels = back + coverage[..., None] * (fill - back)
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


def draw_captioned(
    size: str, rng: np.random.Generator, *, aspect: float, span: float, centred: bool, jpeg: bool
) -> tuple[Image.Image, str]:
    """A drawing of a ``size`` shape of ``span`` in an image of ``aspect``, any kind, colour and backdrop, with its caption."""
    kind, colour, backdrop = KINDS[rng.integers(3)], list(SHADES)[rng.integers(4)], ("white", "black")[rng.integers(2)]
    image = draw(kind, colour, size, backdrop, rng, aspect=aspect, span=span, centred=centred)
    if jpeg:
        image = _as_jpeg(image, int(rng.integers(40, 96)))
    return image, f"a {size} {colour} {kind} on a {backdrop} background"


def draw_set(count: int, seed: int, *, jpeg: bool = False) -> tuple[list[Image.Image], list[str]]:
    """``count`` drawings with their captions, each picked at random from ``seed``; ``jpeg``: each saved at quality 40-95."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        kind, colour = KINDS[rng.integers(3)], list(SHADES)[rng.integers(4)]
        size, backdrop = ("small", "large")[rng.integers(2)], ("white", "black")[rng.integers(2)]
        image, quality = draw(kind, colour, size, backdrop, rng), int(rng.integers(40, 96))
        # The quality is drawn either way, so a seed gives the same drawings with and without JPEG.
        images.append(_as_jpeg(image, quality) if jpeg else image)
        captions.append(f"a {size} {colour} {kind} on a {backdrop} background")
    return images, captions


def _image_size(rng: np.random.Generator, aspect: float | None) -> tuple[int, int]:
    """``(width, height)``: a shorter side of 32-640 px, the longer at most 1024 px."""
    if aspect is None:
        short = int(rng.integers(32, 641))
        long = min(1024, int(short * rng.uniform(1.0, 3.0)))
        return (short, long) if rng.random() < 0.5 else (long, short)
    ratio = max(aspect, 1 / aspect)
    short = int(rng.integers(32, min(640, int(1024 / ratio)) + 1))
    long = round(short * ratio)
    return (long, short) if aspect >= 1 else (short, long)


def _coverage(kind: str, box: tuple[float, float, float, float], size: tuple[int, int], subsamples: int) -> np.ndarray:
    """Fraction of each pixel inside the shape, from ``subsamples``² points per pixel."""
    x0, y0, box_width, box_height = box
    coverage = np.zeros((size[1], size[0]), dtype=np.float32)
    # Only the pixels the box touches can be covered; the rest stay 0.
    left, top = int(x0), int(y0)
    right, bottom = min(size[0], int(np.ceil(x0 + box_width))), min(size[1], int(np.ceil(y0 + box_height)))
    offsets = (np.arange(subsamples) + 0.5) / subsamples
    xs = (np.arange(left, right)[:, None] + offsets[None, :]).reshape(-1)
    ys = (np.arange(top, bottom)[:, None] + offsets[None, :]).reshape(-1)
    # Coordinates relative to the box, in units of its width and height: inside the box is 0..1.
    u, v = (xs[None, :] - x0) / box_width, (ys[:, None] - y0) / box_height
    if kind == "circle":
        inside = (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    elif kind == "square":
        inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    else:  # apex at (0.5, 0), base along v == 1
        inside = (v <= 1) & (np.abs(u - 0.5) <= v / 2)
    samples = inside.astype(np.float32).reshape(bottom - top, subsamples, right - left, subsamples)
    coverage[top:bottom, left:right] = samples.mean(axis=(1, 3))
    return coverage


def _as_jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
