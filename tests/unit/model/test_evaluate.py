"""The stratified evaluation: every stratum exists, its orders cover it, and both drawers draw what an order fixes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from model import evaluate


def _shape_box(image: Image.Image) -> tuple[float, float, int, int]:
    """Centre (x, y) and width, height of the fill's pixels: far from both backgrounds and not grey."""
    pixels = np.asarray(image).astype(int)
    mask = pixels.max(axis=2) - pixels.min(axis=2) > 60
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    width, height = int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)
    return (columns[0] + columns[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2, width, height


def test_strata_cross_every_aspect_band_position_and_format() -> None:
    names = [stratum.name for stratum in evaluate.STRATA]
    assert len(names) == len(set(names)) == 3 * 4 * 2 * 2
    assert {(stratum.low, stratum.high) for stratum in evaluate.STRATA} == {
        (0.2, 0.3),
        (0.3, 0.4),
        (0.6, 0.75),
        (0.75, 0.95),
    }


@pytest.mark.parametrize("stratum", evaluate.STRATA[::5], ids=lambda stratum: stratum.name)
def test_orders_span_their_band_edge_to_edge_in_both_orientations(stratum: evaluate.Stratum) -> None:
    orders = evaluate.orders_for(stratum, 11, seed=3)
    spans = [order.span for order in orders]
    assert spans[0] == stratum.low and spans[-1] == stratum.high and spans == sorted(spans)
    low, high = evaluate.ASPECTS[stratum.aspect]
    assert all(low - 1e-9 <= max(order.aspect, 1 / order.aspect) <= high + 1e-9 for order in orders)
    if low > 1 or high > 1:
        assert sum(order.aspect > 1 for order in orders) in (5, 6)
    assert {(order.size, order.centred, order.jpeg) for order in orders} == {
        (stratum.size, stratum.centred, stratum.jpeg)
    }
    assert orders == evaluate.orders_for(stratum, 11, seed=3) != evaluate.orders_for(stratum, 11, seed=4)


@pytest.mark.parametrize("drawer", list(evaluate.DRAWERS))
@pytest.mark.parametrize(("size", "span"), [("small", 0.35), ("large", 0.8)])
def test_drawers_draw_the_orders_aspect_span_and_centre(drawer: str, size: str, span: float) -> None:
    for seed, aspect in enumerate((1.0, 2.5, 1 / 1.5)):
        order = evaluate.Order(size, aspect, span, centred=True, jpeg=False, seed=seed)
        image, caption = evaluate.DRAWERS[drawer](order)
        width, height = image.size
        short = min(image.size)
        assert abs(width / height - aspect) <= 2 / short and caption.startswith(f"a {size} ")
        centre_x, centre_y, box_width, box_height = _shape_box(image)
        # Blur, anti-aliasing and JPEG may tint a pixel or two beyond the shape.
        assert abs(max(box_width, box_height) - span * short) <= 3
        assert math.dist((centre_x, centre_y), (width / 2, height / 2)) <= 3


@pytest.mark.parametrize("drawer", list(evaluate.DRAWERS))
def test_drawers_save_as_jpeg_only_when_the_order_says(drawer: str) -> None:
    png = evaluate.Order("small", 1.0, 0.3, centred=False, jpeg=False, seed=7)
    jpeg = evaluate.Order("small", 1.0, 0.3, centred=False, jpeg=True, seed=7)
    png_image, _ = evaluate.DRAWERS[drawer](png)
    jpeg_image, _ = evaluate.DRAWERS[drawer](jpeg)
    assert png_image.size == jpeg_image.size and png_image.tobytes() != jpeg_image.tobytes()
    assert png_image.tobytes() == evaluate.DRAWERS[drawer](png)[0].tobytes()


class _AlwaysSaysY:
    """A captioner that answers "y" to every image."""

    def caption(self, images: list[Image.Image]) -> list[str]:
        return ["y"] * len(images)


def _x_when_centred(order: evaluate.Order) -> tuple[Image.Image, str]:
    return Image.new("RGB", (8, 8)), "x" if order.centred else "y"


def _always_y(order: evaluate.Order) -> tuple[Image.Image, str]:
    return Image.new("RGB", (8, 8)), "y"


def test_report_puts_the_worst_stratum_first_and_counts_every_drawing_overall() -> None:
    strata = evaluate.STRATA[:4]  # centred PNG, centred JPEG, anywhere PNG, anywhere JPEG
    drawers = {"wrong_when_centred": _x_when_centred, "right": _always_y}
    report = evaluate.evaluate(_AlwaysSaysY(), n=5, seed=0, strata=strata, drawers=drawers)  # type: ignore[arg-type]
    assert [stratum.centred for stratum, _ in report.rows] == [True, True, False, False]
    assert report.overall == {"wrong_when_centred": 0.5, "right": 1.0}
    assert report.rows[0][1]["wrong_when_centred"].misses[0]["got"] == "y"
    table = report.table().splitlines()
    assert table[1].startswith(report.rows[0][0].name) and table[-1].split()[1:] == ["50.0%", "100.0%"]
    as_json = json.loads(json.dumps(report.as_json()))
    assert [row["stratum"] for row in as_json["strata"]] == [stratum.name for stratum, _ in report.rows]
    assert as_json["strata"][-1]["right"]["exact_match"] == 1.0
