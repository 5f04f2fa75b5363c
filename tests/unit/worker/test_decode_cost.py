"""Structural cost checks before decoding (worker.intake.decode_cost): scan bombs and chunk bombs refused cheaply."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from shared.errors import ImageTooComplex
from tests.servers import png_chunk_bomb, scan_bomb_jpeg
from worker.intake.decode_cost import MAX_PNG_CHUNKS, check_decode_cost, count_jpeg_scans, count_png_chunks


def _encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, image_format, **params)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "scans"),
    [
        (_encode(Image.new("RGB", (64, 64), (9, 99, 199)), "JPEG"), 1),  # baseline: one scan
        (_encode(Image.new("RGB", (64, 64), (9, 99, 199)), "JPEG", progressive=True), 10),  # libjpeg's colour script
        (_encode(Image.new("L", (64, 64), 7), "JPEG", progressive=True), 6),  # its greyscale script
        (scan_bomb_jpeg(scans=500, side_px=64), 500),
    ],
)
def test_scans_are_counted_exactly(data: bytes, scans: int) -> None:
    assert count_jpeg_scans(data, stop_after=10_000) == scans


def test_counting_stops_one_past_the_ceiling() -> None:
    assert count_jpeg_scans(scan_bomb_jpeg(scans=5_000, side_px=64), stop_after=100) == 101


def test_a_scan_bomb_is_refused_before_any_decoding_within_milliseconds() -> None:
    bomb = scan_bomb_jpeg(scans=10_000, side_px=2048)  # seconds of CPU to decode, 200 kB to send
    began = time.process_time()
    with pytest.raises(ImageTooComplex) as caught:
        check_decode_cost(bomb, "JPEG", max_jpeg_scans=100)
    assert time.process_time() - began < 0.1
    assert caught.value.code == "image_too_complex"
    assert "more than 100 scans" in caught.value.message


def test_a_jpeg_at_the_ceiling_passes() -> None:
    check_decode_cost(scan_bomb_jpeg(scans=100, side_px=64), "JPEG", max_jpeg_scans=100)


def test_a_truncated_jpeg_is_counted_as_far_as_it_goes() -> None:
    data = scan_bomb_jpeg(scans=50, side_px=64)
    assert 0 < count_jpeg_scans(data[: len(data) // 2], stop_after=1_000) < 50


def test_a_png_chunk_bomb_is_refused_and_an_honest_png_passes() -> None:
    with pytest.raises(ImageTooComplex):
        check_decode_cost(png_chunk_bomb(MAX_PNG_CHUNKS + 10), "PNG", max_jpeg_scans=100)
    honest = _encode(Image.new("RGB", (300, 300), (1, 2, 3)), "PNG")
    assert count_png_chunks(honest, stop_after=MAX_PNG_CHUNKS) == 3  # IHDR, IDAT, IEND
    check_decode_cost(honest, "PNG", max_jpeg_scans=100)


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "BMP", "AVIF"])
def test_other_formats_are_left_to_the_cpu_budget(image_format: str) -> None:
    check_decode_cost(b"\x00" * 64, image_format, max_jpeg_scans=1)
