"""Exact-match accuracy of a captioner in every stratum of the embedded model's world, on two independent drawers.

A stratum fixes the image's aspect ratio (1:1; up to 2:1; 2:1 to 3:1, either orientation), a band of
the shape's span (small 0.20-0.30 or 0.30-0.40; large 0.60-0.75 or 0.75-0.95, each band's edges
included), its position (centred, or anywhere) and the file format (PNG, or JPEG at quality 40-95).
Everything else (shape, colour, background, shade, image side) each drawer picks its own way: the
trainer's (``model.shapes``) and an independent one (``model.reference_drawings``). An average over the
whole world hides a weak corner; the worst stratum does not. Run through ``python -m model.train
--evaluate`` (README, "The model").
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from model import reference_drawings, shapes
from model.captioner import Captioner

#: Default seed of the evaluation: none of the training set's seeds (``train.TRAIN_SEED`` * 1000003 + i).
EVAL_SEED = 98765
#: Aspect ratios (longer side / shorter side) of each stratum's images.
ASPECTS: dict[str, tuple[float, float]] = {"1:1": (1.0, 1.0), "up to 2:1": (1.0, 2.0), "2:1 to 3:1": (2.0, 3.0)}
#: Span bands, as fractions of the image's shorter side, with the size the rules give them.
BANDS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.20, 0.30),
    ("small", 0.30, 0.40),
    ("large", 0.60, 0.75),
    ("large", 0.75, 0.95),
)


@dataclass(frozen=True)
class Stratum:
    """One corner of the world: an aspect-ratio range, a span band, a position and a file format."""

    aspect: str
    size: str
    low: float
    high: float
    centred: bool
    jpeg: bool

    @property
    def name(self) -> str:
        """E.g. ``"1:1 small 0.30-0.40 centred PNG"``."""
        where, file_format = "centred" if self.centred else "anywhere", "JPEG" if self.jpeg else "PNG"
        return f"{self.aspect} {self.size} {self.low:.2f}-{self.high:.2f} {where} {file_format}"


#: Every stratum: 3 aspect ranges x 4 span bands x 2 positions x 2 formats.
STRATA: tuple[Stratum, ...] = tuple(
    Stratum(aspect, size, low, high, centred, jpeg)
    for aspect in ASPECTS
    for size, low, high in BANDS
    for centred in (True, False)
    for jpeg in (False, True)
)


@dataclass(frozen=True)
class Order:
    """What a drawer is asked for: everything a stratum fixes, and a seed for everything it leaves open."""

    size: str
    aspect: float  # width / height
    span: float
    centred: bool
    jpeg: bool
    seed: int


Drawer = Callable[[Order], tuple[Image.Image, str]]


def draw_by_trainer(order: Order) -> tuple[Image.Image, str]:
    """The trainer's drawer at full size, with all its variety (fills, backgrounds, edges, blur and noise)."""
    drawing = shapes.draw_varied(
        random.Random(order.seed),
        order.size,
        aspect=order.aspect,
        span=order.span,
        centred=order.centred,
        jpeg=order.jpeg,
    )
    return drawing.image, drawing.caption


def draw_independently(order: Order) -> tuple[Image.Image, str]:
    """``model.reference_drawings``, which shares no code with the trainer's drawer."""
    return reference_drawings.draw_captioned(
        order.size,
        np.random.default_rng(order.seed),
        aspect=order.aspect,
        span=order.span,
        centred=order.centred,
        jpeg=order.jpeg,
    )


#: The drawers, by the name the report gives them.
DRAWERS: dict[str, Drawer] = {"trainer": draw_by_trainer, "independent": draw_independently}


def orders_for(stratum: Stratum, n: int, seed: int) -> list[Order]:
    """``n`` orders in ``stratum``: spans evenly across its band, edges included, and half of each orientation."""
    rng = random.Random(f"{seed}:{stratum.name}")  # a string seed is hashed the same way in every run
    low, high = ASPECTS[stratum.aspect]
    orders = []
    for index in range(n):
        span = stratum.low + (stratum.high - stratum.low) * index / max(1, n - 1)
        ratio = math.exp(rng.uniform(math.log(low), math.log(high)))
        aspect = ratio if index % 2 == 0 else 1 / ratio
        orders.append(Order(stratum.size, aspect, round(span, 6), stratum.centred, stratum.jpeg, rng.getrandbits(63)))
    return orders


@dataclass(frozen=True)
class Score:
    """How many of a stratum's drawings one drawer's set got exactly right, with a few misses as examples."""

    correct: int
    n: int
    misses: tuple[dict[str, object], ...] = ()

    @property
    def exact_match(self) -> float:
        """Share of the drawings captioned exactly right."""
        return self.correct / self.n


@dataclass(frozen=True)
class Report:
    """Scores per stratum and drawer, ``rows`` worst stratum first."""

    n_per_stratum: int
    seed: int
    rows: tuple[tuple[Stratum, dict[str, Score]], ...]

    @property
    def overall(self) -> dict[str, float]:
        """Exact-match share of every drawing, per drawer."""
        drawers = self.rows[0][1] if self.rows else {}
        return {name: sum(scores[name].correct for _, scores in self.rows) / self._total() for name in drawers}

    def _total(self) -> int:
        return sum(next(iter(scores.values())).n for _, scores in self.rows)

    def as_json(self) -> dict[str, object]:
        """The report as plain JSON values."""
        return {
            "n_per_stratum": self.n_per_stratum,
            "seed": self.seed,
            "overall": self.overall,
            "strata": [
                {
                    "stratum": stratum.name,
                    **{name: {**asdict(score), "exact_match": score.exact_match} for name, score in scores.items()},
                }
                for stratum, scores in self.rows
            ],
        }

    def table(self) -> str:
        """One line per stratum, worst first, then the overall scores."""
        names = list(self.rows[0][1]) if self.rows else []
        width = max([len("overall"), *(len(stratum.name) for stratum, _ in self.rows)])
        lines = [f"{'stratum':<{width}}" + "".join(f"  {name:>16}" for name in names)]
        for stratum, scores in self.rows:
            cells = "".join(
                f"  {scores[name].correct:>5}/{scores[name].n:<4} {100 * scores[name].exact_match:5.1f}%"
                for name in names
            )
            lines.append(f"{stratum.name:<{width}}{cells}")
        lines.append(f"{'overall':<{width}}" + "".join(f"  {100 * self.overall[name]:15.1f}%" for name in names))
        return "\n".join(lines)


def score_stratum(
    captioner: Captioner, drawer: Drawer, stratum: Stratum, n: int, seed: int, batch_size: int = 50
) -> Score:
    """Exact matches of ``n`` drawings of ``stratum`` by ``drawer``, captioned in batches, with up to 3 misses."""
    orders = orders_for(stratum, n, seed)
    correct, misses = 0, list[dict[str, object]]()
    for start in range(0, n, batch_size):
        chunk = orders[start : start + batch_size]
        images, expected = zip(*(drawer(order) for order in chunk), strict=True)
        for order, image, caption, want in zip(chunk, images, captioner.caption(list(images)), expected, strict=True):
            correct += caption == want
            if caption != want and len(misses) < 3:
                misses.append({"expected": want, "got": caption, "span": order.span, "size_px": list(image.size)})
    return Score(correct, n, tuple(misses))


def evaluate(
    captioner: Captioner,
    n: int = 100,
    seed: int = EVAL_SEED,
    strata: tuple[Stratum, ...] = STRATA,
    drawers: dict[str, Drawer] | None = None,
) -> Report:
    """``n`` drawings per stratum from each drawer, captioned and scored; the worst stratum first."""
    drawers = DRAWERS if drawers is None else drawers
    rows = [
        (stratum, {name: score_stratum(captioner, drawer, stratum, n, seed) for name, drawer in drawers.items()})
        for stratum in strata
    ]
    rows.sort(key=lambda row: (min(score.exact_match for score in row[1].values()), row[0].name))
    return Report(n, seed, tuple(rows))
