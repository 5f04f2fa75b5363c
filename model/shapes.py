"""Deterministic drawings of captioned shapes: the embedded model's world, and test images for everyone.

Example: ``draw_shape("circle", "red")`` is a large red circle on white that the embedded model captions
``caption_for("circle", "red")`` == ``"a large red circle on a white background"``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

#: Fill colours, as RGB before jitter. Chosen far apart so JPEG or resizing cannot confuse them.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
}
#: Background colours.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
#: Shape names.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Size names, with the shape's extent as a fraction of the image's shorter side.
SIZES: dict[str, tuple[float, float]] = {"small": (0.3, 0.42), "large": (0.62, 0.85)}

#: Default side of a drawn image, in pixels.
DEFAULT_IMAGE_SIZE = 128

_COLOUR_JITTER = 18  # per channel, so the model learns hues rather than exact values


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
) -> Image.Image:
    """Draw one RGB image of an upright ``shape`` at a random position and size, with a little colour jitter.

    Args:
        image_size: side of a square image, or ``(width, height)``; the shape is sized from the shorter
            side and lies within the central square.
        rng: source of the position and jitter; ``None`` means ``random.Random(0)``, so the same call
            always draws the same image.
    """
    _check_names(shape, colour, size, background)
    rng = rng if rng is not None else random.Random(0)
    width, height = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(width, height) < 8:
        raise ValueError(f"image_size must be at least 8 pixels a side, got {image_size!r}")
    image = Image.new("RGB", (width, height), BACKGROUNDS[background])
    low, high = SIZES[size]
    side = min(width, height)
    radius = rng.uniform(low, high) * side / 2
    # The shape stays whole inside the central square, which is what a centre-cropping image
    # processor (git-base's and the embedded model's) keeps of a non-square image.
    left, top = (width - side) / 2, (height - side) / 2
    centre = (left + rng.uniform(radius, side - radius), top + rng.uniform(radius, side - radius))
    fill = _jitter(COLOURS[colour], rng)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        cx, cy = centre
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon(_polygon(shape, centre, radius), fill=fill)
    return image


def random_spec(rng: random.Random) -> ShapeSpec:
    """Pick a shape, colour, size and background uniformly from ``rng``."""
    return ShapeSpec(
        shape=rng.choice(SHAPES),
        colour=rng.choice(list(COLOURS)),
        size=rng.choice(list(SIZES)),
        background=rng.choice(list(BACKGROUNDS)),
    )


def draw_sample(
    rng: random.Random, *, image_size: int | tuple[int, int] = DEFAULT_IMAGE_SIZE
) -> tuple[Image.Image, str]:
    """Draw a random captioned image from ``rng``: returns ``(image, caption)``."""
    spec = random_spec(rng)
    image = draw_shape(spec.shape, spec.colour, spec.size, spec.background, image_size=image_size, rng=rng)
    return image, spec.caption


def _polygon(shape: str, centre: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """Vertices of an upright square or an apex-up triangle inscribed in a circle of ``radius``."""
    # Angles in image coordinates, where y grows downwards: -90° is straight up.
    angles = [45.0, 135.0, 225.0, 315.0] if shape == "square" else [-90.0, 30.0, 150.0]
    cx, cy = centre
    return [(cx + radius * math.cos(math.radians(a)), cy + radius * math.sin(math.radians(a))) for a in angles]


def _jitter(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for c in rgb)
    return r, g, b


def _check_names(shape: str, colour: str, size: str, background: str) -> None:
    for value, known in ((shape, SHAPES), (colour, COLOURS), (size, SIZES), (background, BACKGROUNDS)):
        if value not in known:
            raise ValueError(f"unknown {value!r}; expected one of {', '.join(known)}")
