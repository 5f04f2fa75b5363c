"""Captioner's split path: ``preprocess`` (parallel, per image) then ``generate_from_tensors`` (one call per batch).

Rows with different ``max_new_tokens`` share one ``generate`` and are cut to their own limit: the
captions must equal those each image gets alone with its own limit (greedy decoding is prefix-consistent).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from model import Captioner, shapes


def _drawings(count: int, seed: int) -> list[Image.Image]:
    rng = random.Random(seed)
    return [shapes.draw_sample(rng)[0] for _ in range(count)]


def test_rows_prepared_one_by_one_in_threads_caption_like_caption(embedded_captioner: Captioner) -> None:
    images = _drawings(6, seed=3)
    with ThreadPoolExecutor(3) as pool:
        rows = list(pool.map(lambda image: embedded_captioner.preprocess([image]), images))
    assert all(row.shape[0] == 1 and row.dtype == torch.float32 for row in rows)
    assert embedded_captioner.generate_from_tensors(rows, None, [20] * 6) == embedded_captioner.caption(
        images, max_new_tokens=20
    )


@pytest.mark.parametrize("prompt", [None, "a"])
def test_mixed_token_limits_in_one_batch_equal_each_image_captioned_alone(
    embedded_captioner: Captioner, prompt: str | None
) -> None:
    images = _drawings(5, seed=11)
    limits = [1, 2, 3, 30, 2]
    together = embedded_captioner.generate_from_tensors(embedded_captioner.preprocess(images), prompt, limits)
    alone = [
        embedded_captioner.caption([image], prompt=prompt, max_new_tokens=limit)
        for image, limit in zip(images, limits, strict=True)
    ]
    assert together == [captions[0] for captions in alone]
    # The limits did cut: one token is one word of these captions, thirty is the whole caption.
    assert len(together[0].split()) <= 1 < len(together[3].split())


def test_mixed_token_limits_with_beam_search_are_refused(embedded_captioner: Captioner) -> None:
    rows = embedded_captioner.preprocess(_drawings(2, seed=1))
    with pytest.raises(ValueError, match="greedy"):
        embedded_captioner.generate_from_tensors(rows, None, [3, 5], num_beams=2)


@pytest.mark.parametrize("limits", [[5], [5, 5, 5], [0, 5]])
def test_one_valid_token_limit_per_row_is_required(embedded_captioner: Captioner, limits: list[int]) -> None:
    rows = embedded_captioner.preprocess(_drawings(2, seed=2))
    with pytest.raises(ValueError):
        embedded_captioner.generate_from_tensors(rows, None, limits)
