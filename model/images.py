"""Normalisation of decoded PIL images of any mode to bounded-size 8-bit RGB, the only form the captioner sees.

:func:`shrink_image` brings a decoded image down to a bounded size in its own mode, before any
conversion can multiply its bytes per pixel; :func:`to_rgb` then converts the small result.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: Background that transparent pixels are composited over, as browsers show a transparent PNG.
BACKGROUND_RGB: tuple[int, int, int] = (255, 255, 255)

# Modes whose alpha (or premultiplied alpha) must be composited rather than dropped:
# a plain convert("RGB") would turn transparent pixels into whatever colour they hide, often black.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# Modes with more than 8 bits per pixel; convert("L") clips them instead of scaling, so a
# 16-bit grey of 32768 would come out white.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_UINT16_MAX = 65535

# Modes Pillow resamples directly (8-bit bands, 16-bit grey, 32-bit int and float); "1" and the palette
# modes are not: their pixels are indices, and resampling needs values.
_RESAMPLABLE_MODES = frozenset(
    {"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"} | _HIGH_DEPTH_MODES
)
# Modes Image.reduce() accepts, so a large shrink can go through it first (reducing_gap): fast and exact enough.
_REDUCIBLE_MODES = _RESAMPLABLE_MODES - {"I;16", "I;16L", "I;16B", "I;16N"}
# Pillow's resize first reduces by a whole factor while the result stays >= this many times the target.
_REDUCING_GAP = 3.0


def shrink_image(image: Image.Image, max_short_side_px: int) -> Image.Image:
    """Return ``image`` scaled down (bicubic, aspect kept) so its shorter side is at most ``max_short_side_px``.

    An image already small enough is returned as is. The result keeps the image's mode where Pillow can
    resample it; palette and 1-bit images become RGB(A) or L first. Colour-keyed transparency
    (``info["transparency"]``) is turned into an alpha band first, since resampling would blur the key colour.
    """
    if min(image.size) <= max_short_side_px:
        return image
    image = _resamplable(image)
    scale = max_short_side_px / min(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    gap = _REDUCING_GAP if image.mode in _REDUCIBLE_MODES else None
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=gap)


def _resamplable(image: Image.Image) -> Image.Image:
    """``image`` in a mode Pillow resamples, with any colour key turned into alpha."""
    if image.mode in _RESAMPLABLE_MODES and "transparency" not in image.info:
        return image
    if image.mode in ("1", "L") and "transparency" not in image.info:
        return image.convert("L")
    if image.mode in ("1", "L"):
        return image.convert("LA")
    return image.convert("RGBA" if _has_transparency(image) else "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB: alpha composited over white, 16-bit and float data scaled to 0..255.

    An image already in RGB mode without a transparency key is returned as is (not copied).
    Scaling rules for the high-depth modes, which carry no declared range:

    * ``I;16*``: 0..65535 maps linearly to 0..255.
    * ``I`` (32-bit int): values within 0..255 are kept; within 0..65535 they are read as 16-bit
      (how 16-bit PNGs and TIFFs often arrive); anything else is stretched from its min..max.
    * ``F`` (32-bit float): values within 0..1 are read as fractions; within 0..255 as 8-bit
      levels; anything else is stretched from its min..max. NaN reads as 0.

    Raises:
        ValueError: PIL cannot convert the mode to RGB.
    """
    if image.mode == "RGB" and not _has_transparency(image):
        return image
    if image.mode in _HIGH_DEPTH_MODES:
        image = _scale_to_l(image)
    if _has_transparency(image):
        return _composite_over_background(image)
    return image.convert("RGB")


def _has_transparency(image: Image.Image) -> bool:
    # P, L and RGB images carry transparency as a colour key in info (PNG tRNS, GIF), not as a band.
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _composite_over_background(image: Image.Image) -> Image.Image:
    # PIL converts premultiplied "La" only to "LA", not straight to RGBA.
    rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_l(image: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float single-band image to 8-bit greyscale ("L").

    float32 and in place: 4 bytes per pixel of working memory besides the 1-byte result (float64 and
    fresh arrays per step cost about 34 bytes per pixel).
    """
    pixels = np.array(image, dtype=np.float32)  # always a writable copy, even of an "F" image
    np.nan_to_num(pixels, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = _source_range(image.mode, pixels)
    if high > low:
        pixels -= low
        pixels *= 255.0 / (high - low)
    else:
        pixels.fill(0.0)
    # Round rather than truncate so 65535 → 255 and 257 → 1 exactly.
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return Image.fromarray(pixels.astype(np.uint8))  # a 2-D uint8 array is mode "L"


def _source_range(mode: str, pixels: np.ndarray) -> tuple[float, float]:
    """The value range that maps onto 0..255 for a high-depth ``mode``."""
    if mode.startswith("I;16"):
        return 0.0, float(_UINT16_MAX)
    if pixels.size == 0:
        return 0.0, 255.0
    low, high = float(pixels.min()), float(pixels.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    if low >= 0.0 and high <= 255.0:
        return 0.0, 255.0
    if mode == "I" and low >= 0.0 and high <= _UINT16_MAX:
        return 0.0, float(_UINT16_MAX)
    logger.debug("stretching %s image from its own range %s..%s", mode, low, high)
    return low, high
