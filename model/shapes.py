"""Deterministic drawings of captioned shapes: the embedded model's world, and test images for everyone.

Example: ``draw_shape("circle", "red")`` is a large red circle on white that the embedded model captions
``caption_for("circle", "red")`` == ``"a large red circle on a white background"``.

The world's rules (README, "The model"), which ``draw_shape`` follows and the embedded model is trained on:

* a shape's *span* is the longer side of its bounding box, as a fraction of the image's shorter side;
* small: span from 20 % to at most 40 %; large: span at least 60 %, up to 95 %;
* the shape is upright (a circle, an axis-aligned square, a triangle with its apex up and a height of
  75-100 % of its base) and lies wholly inside the image, anywhere;
* the background is white or black, or close to them (each channel within ``BACKGROUND_TOLERANCE``).
"""

from __future__ import annotations

import colorsys
import io
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

#: Fill colours, as RGB before jitter. Chosen far apart so JPEG or resizing cannot confuse them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
}
#: The hues (degrees) each colour name covers when drawings vary their fill, for training.
HUES: dict[str, tuple[float, float]] = {
    "red": (-15.0, 12.0),
    "green": (95.0, 150.0),
    "blue": (205.0, 245.0),
    "yellow": (46.0, 62.0),
}
#: Background colours.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
#: How far (per channel) a background may stray from pure white or black and still be called so.
BACKGROUND_TOLERANCE = 24
#: Shape names.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Size names, with the range of the shape's span as a fraction of the image's shorter side.
SIZES: dict[str, tuple[float, float]] = {"small": (0.2, 0.4), "large": (0.6, 0.95)}

#: Default side of a drawn image, in pixels.
DEFAULT_IMAGE_SIZE = 128
#: Bounds of the image sides that ``random_image_size`` picks, and of their aspect ratio.
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE, MAX_ASPECT = 32, 1024, 3.0
#: The ranges of aspect ratio (longer side / shorter) that ``random_aspect`` picks from, and how often each.
ASPECT_RANGES: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.0, 2.0), (2.0, MAX_ASPECT))
#: Most drawings (60 %) wider than 2:1: there a small shape is squeezed to a few pixels across, and a large
#: one to a sliver with less area than a small square shape in a square image. Up to 2:1 lies between the
#: other two and is learnt from them (README, "The model").
ASPECT_WEIGHTS: tuple[float, ...] = (0.25, 0.15, 0.6)
#: Share of evenly drawn shapes (``draw_varied_batch``) that sit in the middle of the image rather than anywhere.
CENTRED_SHARE = 0.1

_COLOUR_JITTER = 18  # per channel, so the model learns hues rather than exact values
_TRIANGLE_HEIGHT = (0.75, 1.0)  # of its base
_SUPERSAMPLED_PIXELS = 1024  # anti-aliasing draws at up to 4x, within this many pixels a side


@dataclass(frozen=True)
class ShapeSpec:
    """What a drawing shows; each field is one of the names in this module's tables."""

    shape: str
    colour: str
    size: str = "large"
    background: str = "white"

    @property
    def caption(self) -> str:
        """The caption the embedded model is trained to give for this drawing."""
        return caption_for(self.shape, self.colour, self.size, self.background)


class Box(NamedTuple):
    """Where a drawn shape's bounding box lies, as fractions of the image's width and height.

    Fractions survive any resize of the whole image, squeezed or not: the box is the same in the
    embedded model's square. Training uses it to tell the vision tower where the shape is
    (``model.shape_supervision``).
    """

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class Drawing:
    """One drawn image with what it shows: its caption, its shape's name and where the shape lies."""

    image: Image.Image
    caption: str
    shape: str
    box: Box


def caption_for(shape: str, colour: str, size: str = "large", background: str = "white") -> str:
    """Return the caption of a drawing, e.g. ``"a large red circle on a white background"``."""
    _check_names(shape, colour, size, background)
    return f"a {size} {colour} {shape} on a {background} background"


def caption_vocabulary() -> list[str]:
    """Every word any caption uses, in a fixed order."""
    words = ["a", "on", "background", *SIZES, *COLOURS, *SHAPES, *BACKGROUNDS]
    return list(dict.fromkeys(words))


def draw_shape(
    shape: str,
    colour: str,
    size: str = "large",
    background: str = "white",
    *,
    image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE,
    rng: random.Random | None = None,
    varied: bool = False,
    span: float | None = None,
    centred: bool = False,
) -> Image.Image:
    """Draw one RGB image of an upright ``shape`` of a random span and position within the world's rules.

    Args:
        image_size: side of a square image, or ``(width, height)``; the span is measured on the shorter side.
        rng: source of the span, position and colours; ``None`` means ``random.Random(0)``, so the same
            call always draws the same image.
        varied: draw any fill hue the colour name covers, a background near (not only at) pure white or
            black, and aliased or anti-aliased edges; otherwise a slightly jittered fill on the exact
            background, anti-aliased.
        span: the shape's span, as a fraction of the shorter side, instead of one drawn from ``SIZES[size]``.
        centred: put the shape's box in the middle of the image rather than anywhere.
    """
    image, _ = _draw_shape_and_box(
        shape, colour, size, background, image_size=image_size, rng=rng, varied=varied, span=span, centred=centred
    )
    return image


def _draw_shape_and_box(
    shape: str,
    colour: str,
    size: str,
    background: str,
    *,
    image_size: int | tuple[int, int],
    rng: random.Random | None,
    varied: bool,
    span: float | None,
    centred: bool,
) -> tuple[Image.Image, Box]:
    """``draw_shape``, and the shape's ``Box``."""
    _check_names(shape, colour, size, background)
    rng = rng if rng is not None else random.Random(0)
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(width, height) < 8:
        raise ValueError(f"image_size must be at least 8 pixels a side, got {image_size!r}")
    span_px = (rng.uniform(*SIZES[size]) if span is None else span) * min(width, height)
    box_height = span_px * rng.uniform(*_TRIANGLE_HEIGHT) if shape == "triangle" else span_px
    if centred:
        left, top = (width - span_px) / 2, (height - box_height) / 2
    else:
        left, top = rng.uniform(0, width - span_px), rng.uniform(0, height - box_height)
    box = (left, top, left + span_px, top + box_height)
    if varied:
        fill, back = random_fill(colour, rng), random_background(background, rng)
        antialias = rng.random() < 0.5
    else:
        fill, back, antialias = _jitter(COLOURS[colour], rng), BACKGROUNDS[background], True
    mask = _shape_mask(shape, box, (width, height), antialias)
    image = Image.composite(Image.new("RGB", (width, height), fill), Image.new("RGB", (width, height), back), mask)
    return image, Box(box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def random_fill(colour: str, rng: random.Random) -> tuple[int, int, int]:
    """A fill that a person would call ``colour``: a hue in its ``HUES`` range, saturated and bright."""
    low, high = HUES[colour]
    value = rng.uniform(0.8, 1.0) if colour == "yellow" else rng.uniform(0.55, 1.0)
    rgb = colorsys.hsv_to_rgb((rng.uniform(low, high) % 360) / 360, rng.uniform(0.6, 1.0), value)
    red, green, blue = (round(channel * 255) for channel in rgb)
    return red, green, blue


def random_background(background: str, rng: random.Random) -> tuple[int, int, int]:
    """A background within ``BACKGROUND_TOLERANCE`` of pure ``background``: pure half of the time."""
    if rng.random() < 0.5:
        return BACKGROUNDS[background]
    shift = [rng.randint(0, BACKGROUND_TOLERANCE) for _ in range(3)]
    red, green, blue = (255 - s if background == "white" else s for s in shift)
    return red, green, blue


def random_spec(rng: random.Random) -> ShapeSpec:
    """Pick a shape, colour, size and background uniformly from ``rng``."""
    return ShapeSpec(
        shape=rng.choice(SHAPES),
        colour=rng.choice(list(COLOURS)),
        size=rng.choice(list(SIZES)),
        background=rng.choice(list(BACKGROUNDS)),
    )


def random_image_size(rng: random.Random) -> tuple[int, int]:
    """``(width, height)``: shorter side log-uniform in 32..1024 px, aspect ratio log-uniform up to 3:1."""
    short = round(math.exp(rng.uniform(math.log(MIN_IMAGE_SIDE), math.log(MAX_IMAGE_SIDE))))
    long = min(MAX_IMAGE_SIDE, round(short * math.exp(rng.uniform(0.0, math.log(MAX_ASPECT)))))
    return (short, long) if rng.random() < 0.5 else (long, short)


def draw_sample(
    rng: random.Random, *, image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE, varied: bool = False
) -> tuple[Image.Image, str]:
    """Draw a random captioned image from ``rng``: returns ``(image, caption)``."""
    drawing = _draw_sample(rng, image_size=image_size, varied=varied)
    return drawing.image, drawing.caption


def _draw_sample(rng: random.Random, *, image_size: int | tuple[int, int], varied: bool) -> Drawing:
    spec = random_spec(rng)
    image, box = _draw_shape_and_box(
        spec.shape,
        spec.colour,
        spec.size,
        spec.background,
        image_size=image_size,
        rng=rng,
        varied=varied,
        span=None,
        centred=False,
    )
    return Drawing(image, spec.caption, spec.shape, box)


def draw_varied(
    rng: random.Random,
    size: str,
    *,
    aspect: float,
    span: float,
    centred: bool = False,
    jpeg: bool | None = None,
    max_side: int | None = None,
) -> Drawing:
    """One captioned drawing of a ``size`` shape of ``span`` in an image of ``aspect`` (width / height).

    Everything else (shape, colour, background, fill, finish, the image's shorter side) varies as in
    ``draw_varied_batch``; ``jpeg`` as in ``roughen``, ``max_side`` as in ``draw_varied_batch``.
    """
    width, height = _image_size_of(rng, aspect, MAX_IMAGE_SIDE if max_side is None else max_side)
    spec = random_spec(rng)
    image, box = _draw_shape_and_box(
        spec.shape,
        spec.colour,
        size,
        spec.background,
        image_size=(width, height),
        rng=rng,
        varied=True,
        span=span,
        centred=centred,
    )
    caption = caption_for(spec.shape, spec.colour, size, spec.background)
    return Drawing(roughen(image, rng, jpeg=jpeg), caption, spec.shape, box)


def draw_varied_batch(
    rng: random.Random, count: int, *, max_side: int | None = None, evenly: bool = False
) -> tuple[list[Image.Image], list[str]]:
    """``count`` captioned drawings with all the variety the rules allow: sizes, aspect ratios, fills, finishes.

    Args:
        max_side: draw an image whose longer side is above this at that side instead, same aspect ratio
            and same drawing otherwise. Training uses it: a model that sees every image squeezed to
            128 px can hardly tell a 1024-px drawing from its 256-px rendering, and drawing it costs 16 times less.
        evenly: give each corner of the world its share (``random_aspect``, ``CENTRED_SHARE``). Drawn
            the way the world's images fall, exactly square images and centred shapes are rare, and a
            model trained so takes a small square's shape of span 0.30-0.40 for a large one.
    """
    drawings = draw_training_set(rng, count, max_side=max_side, evenly=evenly)
    return [drawing.image for drawing in drawings], [drawing.caption for drawing in drawings]


def draw_training_set(
    rng: random.Random, count: int, *, max_side: int | None = None, evenly: bool = False
) -> list[Drawing]:
    """``draw_varied_batch``'s drawings, each with its shape's name and ``Box``."""
    drawings = []
    for _ in range(count):
        if evenly:
            drawing = _draw_evenly(rng, max_side)
        else:
            width, height = random_image_size(rng)
            if max_side is not None and max(width, height) > max_side:
                scale = max_side / max(width, height)
                width, height = max(8, round(width * scale)), max(8, round(height * scale))
            drawing = _draw_sample(rng, image_size=(width, height), varied=True)
            drawing = Drawing(roughen(drawing.image, rng), drawing.caption, drawing.shape, drawing.box)
        drawings.append(drawing)
    return drawings


def random_aspect(rng: random.Random) -> float:
    """Width / height: exactly square, up to 2:1 or 2:1 to 3:1 (by ``ASPECT_WEIGHTS``), either orientation."""
    low, high = rng.choices(ASPECT_RANGES, weights=ASPECT_WEIGHTS)[0]
    ratio = math.exp(rng.uniform(math.log(low), math.log(high)))
    return ratio if rng.random() < 0.5 else 1 / ratio


def _draw_evenly(rng: random.Random, max_side: int | None) -> Drawing:
    size = rng.choice(list(SIZES))
    aspect, span = random_aspect(rng), rng.uniform(*SIZES[size])
    return draw_varied(rng, size, aspect=aspect, span=span, centred=rng.random() < CENTRED_SHARE, max_side=max_side)


def _image_size_of(rng: random.Random, aspect: float, max_side: int) -> tuple[int, int]:
    """``(width, height)`` of ``aspect``, the shorter side log-uniform from 32 px, the longer at most ``max_side``."""
    ratio = max(aspect, 1 / aspect)
    longest = min(MAX_IMAGE_SIDE, max_side) / ratio
    short = round(math.exp(rng.uniform(math.log(MIN_IMAGE_SIDE), math.log(max(MIN_IMAGE_SIDE, longest)))))
    long = round(short * ratio)
    return (long, short) if aspect >= 1 else (short, long)


def roughen(image: Image.Image, rng: random.Random, *, jpeg: bool | None = None) -> Image.Image:
    """Maybe blur, add noise and save as JPEG (quality 40-95), as photographed or re-saved drawings are.

    Args:
        jpeg: always (``True``) or never (``False``) save as JPEG; ``None``: half of the time.
    """
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.3:
        noise = np.random.default_rng(rng.getrandbits(64)).standard_normal((*image.size[::-1], 3), dtype=np.float32)
        noisy = np.asarray(image, dtype=np.float32) + noise * rng.uniform(1.0, 8.0)
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.5 if jpeg is None else jpeg:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(40, 95))
        image = Image.open(buffer).convert("RGB")
    return image


def _shape_mask(shape: str, box: tuple[float, ...], size: tuple[int, int], antialias: bool) -> Image.Image:
    """An "L" mask of ``shape`` filling ``box``; anti-aliased by drawing larger and averaging down."""
    scale = max(1, min(4, _SUPERSAMPLED_PIXELS // max(size))) if antialias else 1
    mask = Image.new("L", (size[0] * scale, size[1] * scale), 0)
    left, top, right, bottom = (coordinate * scale for coordinate in box)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((left, top, right - 1, bottom - 1), fill=255)
    elif shape == "square":
        draw.rectangle((left, top, right - 1, bottom - 1), fill=255)
    else:
        draw.polygon([((left + right) / 2, top), (right - 1, bottom - 1), (left, bottom - 1)], fill=255)
    return mask if scale == 1 else mask.resize(size, Image.Resampling.BOX)


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for c in rgb)
    return r, g, b


def _check_names(shape: str, colour: str, size: str, background: str) -> None:
    for value, known in ((shape, SHAPES), (colour, COLOURS), (size, SIZES), (background, BACKGROUNDS)):
        if value not in known:
            raise ValueError(f"unknown {value!r}; expected one of {', '.join(known)}")
