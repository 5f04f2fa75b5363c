"""Exact-match accuracy of a captioner on three sets: the trainer's held-out drawings, an independent drawer's, and those as JPEG.

Run through ``python -m model.train --evaluate`` (see README, "The model").
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image

from model import reference_drawings, shapes
from model.captioner import Captioner

#: Default seed of every evaluation set: none of the training set's seeds (``train.TRAIN_SEED`` * 1000003 + i).
EVAL_SEED = 98765

DrawSet = Callable[[int, int], tuple[list[Image.Image], list[str]]]


def trainer_held_out(count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Drawings by the trainer's own drawer, with all its variety, from a seed it never trained on."""
    return shapes.draw_varied_batch(random.Random(seed), count)


def independent(count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """Drawings by ``model.reference_drawings``, which shares no code with the trainer's drawer."""
    return reference_drawings.draw_set(count, seed)


def independent_jpeg(count: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    """The independent drawer's drawings, each saved as JPEG at a quality from 40 to 95 and decoded."""
    return reference_drawings.draw_set(count, seed, jpeg=True)


#: The evaluation sets, by the name the report gives them.
SETS: dict[str, DrawSet] = {"held_out": trainer_held_out, "independent": independent, "jpeg": independent_jpeg}


def exact_match(captioner: Captioner, draw_set: DrawSet, n: int, seed: int, batch_size: int = 100) -> dict[str, object]:
    """Share of ``n`` drawings of ``draw_set`` captioned exactly right, with up to 10 misses as examples."""
    images, expected = draw_set(n, seed)
    correct, misses = 0, list[dict[str, str]]()
    for start in range(0, n, batch_size):
        got = captioner.caption(images[start : start + batch_size])
        for caption, want in zip(got, expected[start : start + batch_size], strict=True):
            correct += caption == want
            if caption != want and len(misses) < 10:
                misses.append({"expected": want, "got": caption})
    return {"n": n, "seed": seed, "correct": correct, "exact_match": correct / n, "misses": misses}


def evaluate(captioner: Captioner, n: int = 500, seed: int = EVAL_SEED) -> dict[str, dict[str, object]]:
    """``exact_match`` on each of ``SETS``, ``n`` drawings each, all drawn from ``seed``."""
    return {name: exact_match(captioner, draw_set, n, seed) for name, draw_set in SETS.items()}
