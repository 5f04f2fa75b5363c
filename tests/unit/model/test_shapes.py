"""Drawn shapes are deterministic, captioned consistently, and stay inside the image."""

from __future__ import annotations

import random

import numpy as np
import pytest

from model import shapes


def test_caption_names_size_colour_shape_and_background() -> None:
    assert shapes.caption_for("circle", "red", "large", "white") == "a large red circle on a white background"
    assert shapes.caption_for("triangle", "yellow", "small", "black") == "a small yellow triangle on a black background"


def test_caption_defaults_to_large_on_white() -> None:
    assert shapes.caption_for("square", "blue") == "a large blue square on a white background"
    assert shapes.ShapeSpec("square", "blue").caption == "a large blue square on a white background"


@pytest.mark.parametrize(
    "names",
    [("hexagon", "red", "large", "white"), ("circle", "purple", "large", "white"),
     ("circle", "red", "huge", "white"), ("circle", "red", "large", "grey")],
)  # fmt: skip
def test_unknown_names_are_refused(names: tuple[str, str, str, str]) -> None:
    with pytest.raises(ValueError, match="unknown"):
        shapes.caption_for(*names)
    with pytest.raises(ValueError, match="unknown"):
        shapes.draw_shape(*names)


def test_vocabulary_covers_every_caption_word_once() -> None:
    vocabulary = shapes.caption_vocabulary()
    assert len(vocabulary) == len(set(vocabulary))
    rng = random.Random(3)
    for _ in range(200):
        assert set(shapes.random_spec(rng).caption.split()) <= set(vocabulary)


def test_same_arguments_draw_the_same_image() -> None:
    first = shapes.draw_shape("triangle", "green", "small", "black")
    second = shapes.draw_shape("triangle", "green", "small", "black")
    assert first.tobytes() == second.tobytes()


def test_rng_moves_the_shape() -> None:
    first = shapes.draw_shape("circle", "red", rng=random.Random(1))
    second = shapes.draw_shape("circle", "red", rng=random.Random(2))
    assert first.tobytes() != second.tobytes()


@pytest.mark.parametrize("image_size", [128, (500, 300), (40, 90)])
def test_drawing_has_requested_size_and_mode(image_size: int | tuple[int, int]) -> None:
    image = shapes.draw_shape("square", "blue", image_size=image_size)
    expected = (image_size, image_size) if isinstance(image_size, int) else image_size
    assert (image.size, image.mode) == (expected, "RGB")


def test_tiny_image_size_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        shapes.draw_shape("circle", "red", image_size=4)


@pytest.mark.parametrize("background", list(shapes.BACKGROUNDS))
@pytest.mark.parametrize("colour", list(shapes.COLOURS))
def test_shape_is_drawn_in_its_colour_and_fully_inside(colour: str, background: str) -> None:
    image = shapes.draw_shape("circle", colour, "small", background, rng=random.Random(7))
    pixels = np.asarray(image).astype(int)
    shape_mask = np.abs(pixels - np.array(shapes.BACKGROUNDS[background])).sum(axis=2) > 0
    assert shape_mask.any()
    # No shape pixel touches the border: the whole shape is visible.
    assert not (shape_mask[0].any() or shape_mask[-1].any() or shape_mask[:, 0].any() or shape_mask[:, -1].any())
    mean_fill = pixels[shape_mask].mean(axis=0)
    assert np.abs(mean_fill - np.array(shapes.COLOURS[colour])).max() < 30


def test_large_shapes_cover_more_than_small_ones() -> None:
    def coverage(size: str, seed: int) -> float:
        image = shapes.draw_shape("square", "red", size, "white", rng=random.Random(seed))
        return float((np.asarray(image).sum(axis=2) < 3 * 255).mean())

    assert max(coverage("small", seed) for seed in range(20)) < min(coverage("large", seed) for seed in range(20))


def test_samples_follow_the_rng() -> None:
    first_image, first_caption = shapes.draw_sample(random.Random(5))
    second_image, second_caption = shapes.draw_sample(random.Random(5))
    assert (first_caption, first_image.tobytes()) == (second_caption, second_image.tobytes())


def test_samples_cover_every_caption() -> None:
    rng = random.Random(5)
    captions = {shapes.draw_sample(rng)[1] for _ in range(500)}
    assert len(captions) == len(shapes.SHAPES) * len(shapes.COLOURS) * len(shapes.SIZES) * len(shapes.BACKGROUNDS)


def test_shape_lies_in_the_central_square_of_a_wide_image() -> None:
    for seed in range(20):
        image = shapes.draw_shape("circle", "red", "large", "white", image_size=(300, 100), rng=random.Random(seed))
        columns = np.flatnonzero((np.asarray(image).sum(axis=2) < 3 * 255).any(axis=0))
        assert columns.min() >= 100 and columns.max() < 200
