"""Normalisation of decoded PIL images of any mode to 8-bit RGB, the only mode the captioner sees."""

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
    """Scale a 16-bit, 32-bit or float single-band image to 8-bit greyscale ("L")."""
    pixels = np.asarray(image).astype(np.float64)
    pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = _source_range(image.mode, pixels)
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    # Round rather than truncate so 65535 → 255 and 257 → 1 exactly.
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out)  # a 2-D uint8 array is mode "L"


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
