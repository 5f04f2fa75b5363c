"""Bench-only stand-ins for the model: ``model=null`` and ``model=sleep:MS`` (never for real captions).

``null`` does no compute and answers a fixed caption: what the pipeline around the model costs,
its own ceiling. ``sleep:MS`` is a simulated accelerator that holds each batch for MS milliseconds
with the GIL released, as a GPU's ``generate`` does while the kernels run: with it, the bench
measures whether the CPU side keeps an accelerator of a given speed busy.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

#: The caption every stand-in gives.
STANDIN_CAPTION = "a stand-in caption"
_SLEEP = re.compile(r"^sleep:(\d+(?:\.\d+)?)$")


class NullCaptioner:
    """No compute at all: ``preprocess`` keeps nothing, every caption is :data:`STANDIN_CAPTION`."""

    name = "null"
    device = "cpu"
    load_time_s = 0.0
    warmup_time_s = 0.0
    # Decoding shrinks images for a git-base-sized input, as the real model's worker would.
    input_size_px = 224
    # Prompts are ignored; these limits only let the API's prompt check run as with a real model.
    max_prompt_tokens = 510
    prompt_tokenizer = "null"

    def preprocess(self, images: Sequence[Image.Image]) -> list[None]:
        """Nothing to prepare: one placeholder per image."""
        return [None for _ in images]

    def generate_from_tensors(
        self, inputs: Sequence[Any], prompt: str | None, max_new_tokens: Sequence[int], num_beams: int = 1
    ) -> list[str]:
        """One fixed caption per input."""
        return [STANDIN_CAPTION for _ in inputs]


class SleepCaptioner(NullCaptioner):
    """A simulated accelerator: each batch holds the calling thread ``batch_ms`` ms, GIL released."""

    def __init__(self, batch_ms: float) -> None:
        self.batch_ms = batch_ms
        self.name = f"sleep:{batch_ms:g}"

    def generate_from_tensors(
        self, inputs: Sequence[Any], prompt: str | None, max_new_tokens: Sequence[int], num_beams: int = 1
    ) -> list[str]:
        """Sleep for the batch (time.sleep releases the GIL), then one fixed caption per input."""
        time.sleep(self.batch_ms / 1000)
        return super().generate_from_tensors(inputs, prompt, max_new_tokens, num_beams)


def load_standin(model: str) -> NullCaptioner | None:
    """The stand-in ``model`` names (``null`` or ``sleep:MS``), or None when it names a real model."""
    if model == "null":
        return NullCaptioner()
    match = _SLEEP.match(model)
    return SleepCaptioner(float(match.group(1))) if match else None
