"""Measures the peak memory of decoding each image of a folder, as the worker decodes it, then processing it.

Run as ``python -m tests.unit.worker.decode_probe FOLDER MAX_IMAGE_PIXELS``; prints one JSON object per
file. Heavy imports happen once here; then each file is decoded in a forked child, whose peak resident
memory is reset before decoding (``/proc/self/clear_refs``, Linux) and read after, so each figure is that
file's own growth. tracemalloc would miss it: Pillow and numpy allocate in C.

Files ending ``.npy`` hold a decoded frame (an "I" or "F" image no accepted format produces); for those the
child measures what follows decoding: shrinking and conversion. Either way the result then goes through
git-base's image processor (CLIP, 224 px), built from its configuration, as the worker's batch would.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessorPil

from model.captioner import input_size_px
from model.images import shrink_image, to_rgb
from shared.error_families import CaptionizerError
from shared.settings import Settings
from worker.intake.images import DECODE_SIDE_FACTOR, decode_image

# git-base's preprocessor_config.json: resize the shorter side to 224 (bicubic), centre-crop 224x224.
GIT_BASE_PROCESSOR: dict[str, Any] = {
    "size": {"shortest_edge": 224},
    "crop_size": {"height": 224, "width": 224},
    "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match is not None, field
    return int(match.group(1))


def _decode(path: Path, settings: Settings, model_input_px: int) -> Image.Image:
    """Decode as the worker does; the input (file bytes, or the frame of a .npy) is read before the reset."""
    if path.suffix == ".npy":
        frame = Image.fromarray(np.load(path))
        _reset_peak()
        return to_rgb(shrink_image(frame, DECODE_SIDE_FACTOR * model_input_px))
    data = path.read_bytes()
    _reset_peak()
    return decode_image(data, settings, model_input_px=model_input_px)


_baseline_kib = 0


def _reset_peak() -> None:
    """Reset the peak resident set to the current one (Linux >= 4.0: write 5 to clear_refs), the baseline."""
    global _baseline_kib
    Path("/proc/self/clear_refs").write_text("5")
    _baseline_kib = _status_kib("VmRSS")


def _measure(path: Path, settings: Settings, processor: CLIPImageProcessorPil) -> dict[str, Any]:
    """Decode and process one file; its outcome and the resident memory it added at its peak."""
    model_input_px = input_size_px(processor)
    result: dict[str, Any] = {"kind": path.stem}
    try:
        image = _decode(path, settings, model_input_px)
        result["outcome"] = f"{image.width}x{image.height}"
        pixel_values = processor(images=[image], return_tensors="np")["pixel_values"]
        result["pixel_values"] = list(pixel_values.shape)
    except CaptionizerError as exc:
        result["outcome"] = exc.code
    result["added_mib"] = round((_status_kib("VmHWM") - _baseline_kib) / 1024, 1)
    return result


def _measure_in_child(path: Path, settings: Settings, processor: CLIPImageProcessorPil) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, exit without running the parent's cleanup
        os.close(read_fd)
        try:
            try:
                result = _measure(path, settings, processor)
            except Exception as exc:  # reported, so the test shows what broke instead of a dead child
                result = {"kind": path.stem, "outcome": f"raised {type(exc).__name__}: {exc}", "added_mib": None}
            os.write(write_fd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not report:
        return {"kind": path.stem, "outcome": f"child died (wait status {status})", "added_mib": None}
    decoded: dict[str, Any] = json.loads(report)
    return decoded


def main(folder: str, max_image_pixels: str) -> None:
    settings = Settings(max_image_pixels=int(max_image_pixels))
    processor = CLIPImageProcessorPil(**GIT_BASE_PROCESSOR)
    for path in sorted(Path(folder).iterdir()):
        print(json.dumps(_measure_in_child(path, settings, processor)), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
