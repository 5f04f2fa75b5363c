"""to_rgb turns every PIL mode into 8-bit RGB, compositing alpha over white and scaling deep pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.images import to_rgb

WHITE = (255, 255, 255)


def _pixel(image: Image.Image) -> tuple[int, int, int]:
    converted = to_rgb(image)
    assert converted.mode == "RGB"
    assert converted.size == image.size
    value = converted.getpixel((0, 0))
    assert isinstance(value, tuple)
    return (int(value[0]), int(value[1]), int(value[2]))


def test_rgb_image_is_returned_unchanged() -> None:
    image = Image.new("RGB", (4, 3), (1, 2, 3))
    assert to_rgb(image) is image


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("RGBA", (200, 10, 10, 255), (200, 10, 10)),
        ("RGBA", (200, 10, 10, 0), WHITE),
        ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
        ("RGBa", (0, 0, 0, 0), WHITE),
        ("LA", (40, 255), (40, 40, 40)),
        ("LA", (40, 0), WHITE),
        ("La", (40, 0), WHITE),
        ("PA", (0, 0), WHITE),
    ],
)
def test_alpha_is_composited_over_white(mode: str, value: tuple[int, ...], expected: tuple[int, int, int]) -> None:
    assert _pixel(Image.new(mode, (3, 2), value)) == expected


def test_palette_transparency_is_composited_over_white() -> None:
    image = Image.new("P", (2, 2), 1)
    image.putpalette([255, 0, 0, 0, 0, 0])
    image.info["transparency"] = 1
    assert _pixel(image) == WHITE


def test_palette_transparency_survives_a_png_round_trip() -> None:
    image = Image.new("P", (2, 2), 0)
    image.putpalette([0, 0, 0, 0, 0, 255])
    image.putpixel((1, 1), 1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    assert to_rgb(decoded).getpixel((0, 0)) == WHITE
    assert to_rgb(decoded).getpixel((1, 1)) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_colour_key_transparency_is_composited_over_white(mode: str) -> None:
    key: int | tuple[int, int, int] = 7 if mode == "L" else (7, 7, 7)
    image = Image.new(mode, (2, 2), key)
    image.info["transparency"] = key
    assert _pixel(image) == WHITE


def test_palette_without_transparency_keeps_its_colours() -> None:
    image = Image.new("P", (2, 2), 1)
    image.putpalette([0, 0, 0, 10, 200, 30])
    assert _pixel(image) == (10, 200, 30)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [
        ("1", 0, (0, 0, 0)),
        ("1", 1, WHITE),
        ("L", 90, (90, 90, 90)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("YCbCr", (255, 128, 128), WHITE),
        ("HSV", (0, 255, 255), (255, 0, 0)),
        ("RGBX", (5, 6, 7, 0), (5, 6, 7)),
    ],
)
def test_other_8_bit_modes_convert_to_rgb(
    mode: str, value: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    assert _pixel(Image.new(mode, (3, 2), value)) == expected


def test_lab_white_converts_to_white() -> None:
    red, green, blue = _pixel(Image.new("LAB", (2, 2), (255, 128, 128)))
    assert min(red, green, blue) >= 250


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B"])
@pytest.mark.parametrize(("value", "level"), [(0, 0), (257, 1), (32768, 128), (65535, 255)])
def test_16_bit_grey_is_scaled_to_8_bit(mode: str, value: int, level: int) -> None:
    assert _pixel(Image.new(mode, (3, 2), value)) == (level, level, level)


def test_16_bit_png_decodes_and_scales() -> None:
    pixels = np.array([[0, 65535], [32768, 257]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    assert decoded.mode.startswith("I")
    converted = to_rgb(decoded)
    assert [converted.getpixel(xy)[0] for xy in ((0, 0), (1, 0), (0, 1), (1, 1))] == [0, 255, 128, 1]  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "level"),
    [(0, 0), (200, 200), (255, 255), (65535, 255), (32768, 128)],
)
def test_32_bit_int_reads_8_bit_values_as_is_and_larger_ones_as_16_bit(value: int, level: int) -> None:
    assert _pixel(Image.new("I", (3, 2), value)) == (level, level, level)


def test_32_bit_int_outside_16_bits_is_stretched_from_its_range() -> None:
    image = Image.fromarray(np.array([[-1000, 1000]], dtype=np.int32))
    converted = to_rgb(image)
    assert (converted.getpixel((0, 0)), converted.getpixel((1, 0))) == ((0, 0, 0), WHITE)


@pytest.mark.parametrize(("value", "level"), [(0.0, 0), (0.5, 128), (1.0, 255), (100.0, 100), (255.0, 255)])
def test_float_reads_fractions_and_8_bit_levels(value: float, level: int) -> None:
    assert _pixel(Image.new("F", (3, 2), value)) == (level, level, level)


def test_float_out_of_range_is_stretched_and_nan_reads_as_zero() -> None:
    image = Image.fromarray(np.array([[-2.0, 2.0, 0.0, np.nan]], dtype=np.float32))
    converted = to_rgb(image)
    assert [converted.getpixel((x, 0))[0] for x in range(4)] == [0, 255, 128, 128]  # type: ignore[index]


def test_constant_deep_image_does_not_divide_by_zero() -> None:
    image = Image.fromarray(np.full((2, 2), -5.0, dtype=np.float32))
    assert _pixel(image) == (0, 0, 0)


def test_animated_gif_uses_its_current_frame() -> None:
    frames = [Image.new("P", (2, 2), 0), Image.new("P", (2, 2), 1)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 255, 0])
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert _pixel(Image.open(io.BytesIO(buffer.getvalue()))) == (255, 0, 0)
