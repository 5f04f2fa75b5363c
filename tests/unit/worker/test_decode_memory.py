"""Decoding a corpus of hostile images costs bounded memory, each with its exact outcome.

The test draws every image itself, writes them to a folder, and runs ``decode_probe`` in a subprocess:
it decodes each one in a fresh forked child, as the worker does, passes the result through git-base's
image processor (224 px), and reports the decoded size or the error code, and the resident memory the
child added at its peak. The bound asserted is the one docs/intake.md states:
``BYTES_PER_PIXEL`` per pixel of the header (the full first frame in its own mode, plus one converted
copy; more for WebP, whose decoder keeps buffers of its own) plus ``FIXED_MIB`` (the bounded result, the
processor, allocator slack). Images refused from their header must cost next to nothing.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.servers import hostile_images

pytestmark = pytest.mark.timeout(600)

#: The decoder's pixel ceiling in this test (the default is 50 M; the bound scales with it).
MAX_PIXELS = 16_000_000
#: Worst case per header pixel: a 4-byte frame (RGBA, CMYK, I, F) plus Pillow's premultiplied copy
#: when it resamples alpha, plus the 1-byte palette frame it came from (measured: 10.0 for a palette PNG).
BYTES_PER_PIXEL = 11
#: libwebp decodes into buffers of its own before Pillow copies the frame out (measured: 17.0).
BYTES_PER_PIXEL_BY_SUFFIX = {".webp": 18}
#: Everything that does not grow with the header: the <= 448 px result, the processor, malloc's slack.
FIXED_MIB = 48
ROOT = Path(__file__).resolve().parents[3]

BIG = (4000, 3000)  # 12 M pixels: under MAX_PIXELS, far over the model's 224 px
SHRUNK = "597x448"  # BIG with its shorter side brought to twice the model's input


def _encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def _frames(size: tuple[int, int], count: int) -> list[Image.Image]:
    # Alternating colours: identical frames would be merged by the encoders.
    return [Image.new("RGB", size, (255, 0, 0) if i % 2 else (0, 0, 255)) for i in range(count)]


def _animated(image_format: str, size: tuple[int, int], count: int, **params: object) -> bytes:
    frames = _frames(size, count)
    return _encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=40, **params)


def _palette_transparent(size: tuple[int, int]) -> bytes:
    image = Image.new("P", size, 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 254 * 3)
    image.paste(1, (size[0] // 2, 0, size[0], size[1]))
    return _encode(image, "PNG", transparency=0)


def _exif_rotated(size: tuple[int, int]) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90°: the decoded image is taller than wide
    return _encode(Image.new("RGB", size, (255, 0, 0)), "JPEG", exif=exif.tobytes())


def _png16(mode: str, size: tuple[int, int]) -> bytes:
    """A 16-bit-per-channel PNG; Pillow writes only grey at 16 bits, so RGB(A) are written chunk by chunk."""
    if mode == "I;16":
        return _encode(Image.fromarray(np.full(size[::-1], 32768, np.uint16)), "PNG")
    colour_type, channels = {"RGB": (2, 3), "RGBA": (6, 4)}[mode]
    row = b"\x00" + b"\x80\x00" * channels * size[0]
    return _png(struct.pack(">IIBBBBB", *size, 16, colour_type, 0, 0, 0), row * size[1])


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(ihdr: bytes, raw: bytes) -> bytes:
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def _ztxt_bomb(chunks: int = 200) -> bytes:
    """A 16x16 PNG carrying ``chunks`` zTXt chunks of 1 MB of text each, compressed to 1 kB each."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    text = zlib.compress(b"a" * 1_000_000, 9)
    png = _png(ihdr, (b"\x00" + b"\x00" * 48) * 16)
    ihdr_end = 8 + 12 + len(ihdr)  # the signature, then the IHDR chunk
    texts = b"".join(_chunk(b"zTXt", b"k%d\x00\x00" % i + text) for i in range(chunks))
    return png[:ihdr_end] + texts + png[ihdr_end:]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


# kind -> (file suffix, bytes maker, exact outcome: the decoded size or the error code)
CORPUS: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "wide-200000x1": (".png", lambda: _encode(Image.new("L", (200_000, 1)), "PNG"), "image_aspect_ratio"),
    "tall-1x200000": (".png", lambda: _encode(Image.new("L", (1, 200_000)), "PNG"), "image_aspect_ratio"),
    "wide-jpeg-65000x10": (".jpg", lambda: _encode(Image.new("RGB", (65_000, 10)), "JPEG"), "image_aspect_ratio"),
    "ratio-just-over-20": (".png", lambda: _encode(Image.new("RGB", (8961, 448)), "PNG"), "image_aspect_ratio"),
    "ratio-20-at-the-limit": (".png", lambda: _encode(Image.new("RGB", (8960, 448)), "PNG"), "8960x448"),
    "ratio-20-tiny-upscaled": (".png", lambda: _encode(Image.new("RGB", (100, 5)), "PNG"), "100x5"),
    "rgb-just-over-the-pixel-cap": (".png", lambda: _encode(Image.new("RGB", (4001, 4000)), "PNG"), "too_many_pixels"),
    "bomb-png-20000x20000": (".png", lambda: hostile_images()["bomb.png"][0], "too_many_pixels"),
    "bomb-gif-screen-65535": (".gif", lambda: hostile_images()["bomb.gif"][0], "too_many_pixels"),
    "bomb-jpeg-sof-65500": (".jpg", lambda: hostile_images()["bomb.jpg"][0], "too_many_pixels"),
    "png-16-bit-grey": (".png", lambda: _png16("I;16", BIG), SHRUNK),
    "png-16-bit-rgb": (".png", lambda: _png16("RGB", BIG), SHRUNK),
    "png-16-bit-rgba": (".png", lambda: _png16("RGBA", BIG), SHRUNK),
    "png-palette-transparent": (".png", lambda: _palette_transparent(BIG), SHRUNK),
    "png-1-bit": (".png", lambda: _encode(Image.new("1", BIG, 1), "PNG"), SHRUNK),
    "png-grey-colour-key": (".png", lambda: _encode(Image.new("L", BIG, 7), "PNG", transparency=7), SHRUNK),
    "png-la": (".png", lambda: _encode(Image.new("LA", BIG, (9, 128)), "PNG"), SHRUNK),
    "png-rgba": (".png", lambda: _encode(Image.new("RGBA", BIG, (9, 9, 9, 128)), "PNG"), SHRUNK),
    "frame-int32": (".npy", lambda: _npy(np.full(BIG[::-1], 70_000, np.int32)), SHRUNK),
    "frame-float32": (".npy", lambda: _npy(np.full(BIG[::-1], 0.5, np.float32)), SHRUNK),
    "jpeg-cmyk": (".jpg", lambda: _encode(Image.new("CMYK", BIG, (0, 255, 255, 0)), "JPEG"), SHRUNK),
    "jpeg-progressive": (".jpg", lambda: _encode(Image.new("RGB", BIG), "JPEG", progressive=True), SHRUNK),
    "jpeg-exif-rotated": (".jpg", lambda: _exif_rotated(BIG), "448x597"),
    "webp-lossless-rgba": (".webp", lambda: _encode(Image.new("RGBA", BIG), "WEBP", lossless=True), SHRUNK),
    "bmp-32-bit": (".bmp", lambda: _encode(Image.new("RGBA", (2000, 1500)), "BMP"), SHRUNK),
    "gif-300-frames": (".gif", lambda: _animated("GIF", (1000, 800), 300), "560x448"),
    "apng-300-frames": (".png", lambda: _animated("PNG", (1000, 800), 300), "560x448"),
    "webp-300-frames": (".webp", lambda: _animated("WEBP", (1000, 800), 300), "560x448"),
    "jpeg-mpo-50-frames": (".jpg", lambda: _animated("MPO", (1000, 800), 50), "560x448"),
    "avif": (".avif", lambda: _encode(Image.new("RGB", (1200, 900)), "AVIF", speed=10), SHRUNK),
    "png-ztxt-bomb-200-mb-of-text": (".png", _ztxt_bomb, "image_corrupt"),
    "truncated-png": (".png", lambda: hostile_images()["truncated.png"][0], "image_corrupt"),
    "truncated-jpeg": (".jpg", lambda: hostile_images()["truncated.jpg"][0], "image_corrupt"),
    "tiff": (".tif", lambda: _encode(Image.new("RGB", BIG), "TIFF"), "not_an_image"),
}


def _header_pixels(path: Path) -> int:
    """The pixels the file's header declares (0 when it has no readable header)."""
    if path.suffix == ".npy":
        rows, columns = np.load(path, mmap_mode="r").shape
        return int(rows * columns)
    Image.MAX_IMAGE_PIXELS = None  # reading sizes only; the bombs' headers must open here
    try:
        with Image.open(path) as image:
            return image.width * image.height
    except (OSError, ValueError):  # ValueError: Pillow's own cap on PNG text chunks
        return 0


def write_corpus(folder: Path) -> None:
    """Write every corpus image to ``folder``, named by kind (for the probe, or to measure by hand)."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind, (suffix, make, _) in CORPUS.items():
        (folder / f"{kind}{suffix}").write_bytes(make())


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    """Every corpus image decoded in its own child process: outcome and peak added memory, by kind."""
    folder = tmp_path_factory.mktemp("hostile-images")
    write_corpus(folder)
    bomb_limit = Image.MAX_IMAGE_PIXELS
    try:
        pixels = {path.stem: _header_pixels(path) for path in folder.iterdir()}
        suffixes = {path.stem: path.suffix for path in folder.iterdir()}
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    probe = subprocess.run(
        [sys.executable, "-m", "tests.unit.worker.decode_probe", str(folder), str(MAX_PIXELS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-4000:]
    reports = [json.loads(line) for line in probe.stdout.splitlines() if line.startswith("{")]
    return {
        report["kind"]: report | {"header_pixels": pixels[report["kind"]], "suffix": suffixes[report["kind"]]}
        for report in reports
    }


def test_the_corpus_has_at_least_twenty_kinds() -> None:
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("kind", CORPUS)
def test_each_hostile_image_has_its_exact_outcome(measured: dict[str, dict[str, object]], kind: str) -> None:
    assert measured[kind]["outcome"] == CORPUS[kind][2], measured[kind]


@pytest.mark.parametrize("kind", CORPUS)
def test_each_hostile_image_decodes_in_bounded_memory(measured: dict[str, dict[str, object]], kind: str) -> None:
    report = measured[kind]
    added_mib = report["added_mib"]
    assert isinstance(added_mib, float | int), report
    header_pixels = report["header_pixels"]
    assert isinstance(header_pixels, int)
    # Refused from the header: nothing of the declared size was ever allocated.
    decoded_pixels = header_pixels if report["outcome"] not in ("too_many_pixels", "image_aspect_ratio") else 0
    bytes_per_pixel = BYTES_PER_PIXEL_BY_SUFFIX.get(str(report["suffix"]), BYTES_PER_PIXEL)
    bound_mib = bytes_per_pixel * min(decoded_pixels, MAX_PIXELS) / 2**20 + FIXED_MIB
    assert added_mib <= bound_mib, report


@pytest.mark.parametrize("kind", [kind for kind, (_, _, outcome) in CORPUS.items() if outcome[0].isdigit()])
def test_what_decodes_reaches_the_processor_at_the_model_size(
    measured: dict[str, dict[str, object]], kind: str
) -> None:
    assert measured[kind]["pixel_values"] == [1, 3, 224, 224]
