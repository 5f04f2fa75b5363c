"""Drawn shapes are deterministic, captioned consistently, and stay inside the image."""

from __future__ import annotations

import colorsys
import random

import numpy as np
import pytest
from PIL import Image

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
def test_shape_is_drawn_in_its_colour(colour: str, background: str) -> None:
    image = shapes.draw_shape("circle", colour, "small", background, rng=random.Random(7))
    pixels = np.asarray(image).astype(int)
    shape_mask = np.abs(pixels - np.array(shapes.BACKGROUNDS[background])).sum(axis=2) > 0
    assert shape_mask.any()
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


def _shape_box(image: Image.Image, background: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Left, top, width and height of the pixels that differ from ``background``."""
    pixels = np.abs(np.asarray(image).astype(int) - np.array(background)).sum(axis=2) > 0
    rows, columns = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1] - columns[0] + 1), int(rows[-1] - rows[0] + 1)


@pytest.mark.parametrize("shape", shapes.SHAPES)
@pytest.mark.parametrize("size", list(shapes.SIZES))
def test_drawings_follow_the_worlds_rules(shape: str, size: str) -> None:
    rng = random.Random(11)
    outside_central_square = 0
    for _ in range(12):
        width, height = shapes.random_image_size(rng)
        short = min(width, height)
        assert 32 <= short <= max(width, height) <= 1024 and max(width, height) <= 3 * short + 1
        image = shapes.draw_shape(shape, "blue", size, "white", image_size=(width, height), rng=rng)
        left, top, box_width, box_height = _shape_box(image, shapes.BACKGROUNDS["white"])
        low, high = shapes.SIZES[size]
        # Anti-aliased edges may tint one more pixel on each side.
        assert low * short - 1 <= max(box_width, box_height) <= high * short + 2
        if shape != "triangle":  # a circle or square cut by the border would be narrower one way
            assert abs(box_width - box_height) <= 2
        centre = (left + box_width / 2 - (width - short) / 2, top + box_height / 2 - (height - short) / 2)
        outside_central_square += not (0 <= centre[0] <= short and 0 <= centre[1] <= short)
    # Anywhere in the image, not only where a centre crop would keep it (a large one has less room to roam).
    assert outside_central_square > 0 or size == "large"


def test_small_spans_stay_below_forty_and_large_above_sixty_percent() -> None:
    assert shapes.SIZES["small"][1] <= 0.4 and shapes.SIZES["large"][0] >= 0.6


@pytest.mark.parametrize("background", list(shapes.BACKGROUNDS))
def test_varied_drawings_keep_backgrounds_near_pure_and_fills_in_their_hue(background: str) -> None:
    rng = random.Random(8)
    for colour in shapes.COLOURS:
        for _ in range(10):
            image = shapes.draw_shape(colour=colour, shape="square", background=background, rng=rng, varied=True)
            corner = np.asarray(image)[0, 0].astype(int)
            assert np.abs(corner - np.array(shapes.BACKGROUNDS[background])).max() <= shapes.BACKGROUND_TOLERANCE
            red, green, blue = (int(c) for c in np.asarray(image)[64, 64])
            hue = colorsys.rgb_to_hsv(red / 255, green / 255, blue / 255)[0] * 360
            low, high = shapes.HUES[colour]
            assert low - 1 <= (hue if hue <= 300 else hue - 360) <= high + 1


def test_varied_batches_are_deterministic_and_roughened() -> None:
    first_images, first_captions = shapes.draw_varied_batch(random.Random(9), 16)
    second_images, second_captions = shapes.draw_varied_batch(random.Random(9), 16)
    assert first_captions == second_captions
    assert [image.tobytes() for image in first_images] == [image.tobytes() for image in second_images]
    assert len({image.size for image in first_images}) > 12
    capped, _ = shapes.draw_varied_batch(random.Random(9), 16, max_side=100)
    assert max(max(image.size) for image in capped) <= 100 < max(max(image.size) for image in first_images)
    # Some came back through JPEG or noise: pixels that are neither background nor a flat fill.
    assert any(len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 50 for image in first_images)


def test_even_batches_give_square_and_wide_images_their_shares_of_the_draws() -> None:
    images, captions = shapes.draw_varied_batch(random.Random(4), 150, max_side=256, evenly=True)
    square = sum(image.width == image.height for image in images)
    # ASPECT_WEIGHTS: 37.5 of 150 exactly square, where the world's images are almost never so, and 90 past 2:1
    assert 20 <= square <= 56
    wide = [image for image in images if max(image.size) >= 2 * min(image.size)]
    assert 68 <= len(wide) <= 112 and max(max(image.size) for image in images) <= 256
    assert {caption.split()[1] for caption in captions} == set(shapes.SIZES)
    default, _ = shapes.draw_varied_batch(random.Random(4), 150, max_side=256)
    assert sum(image.width == image.height for image in default) < 10


def test_random_aspect_picks_each_range_in_either_orientation() -> None:
    rng = random.Random(5)
    aspects = [shapes.random_aspect(rng) for _ in range(600)]
    ratios = [max(aspect, 1 / aspect) for aspect in aspects]
    # ASPECT_WEIGHTS: 25 % square, 60 % from 2:1 to 3:1 (150 and 360 of 600 expected)
    assert 110 <= sum(ratio == 1.0 for ratio in ratios) <= 190
    assert 310 <= sum(ratio >= 2.0 for ratio in ratios) <= 410 and max(ratios) <= shapes.MAX_ASPECT
    assert sum(aspect > 1.0 for aspect in aspects) >= 100 and sum(aspect < 1.0 for aspect in aspects) >= 100


@pytest.mark.parametrize("evenly", [True, False])
def test_a_training_drawing_knows_its_shape_and_where_its_box_lies(evenly: bool) -> None:
    drawings = shapes.draw_training_set(random.Random(7), 40, max_side=256, evenly=evenly)
    images, captions = shapes.draw_varied_batch(random.Random(7), 40, max_side=256, evenly=evenly)
    assert [drawing.caption for drawing in drawings] == captions
    assert [drawing.image.tobytes() for drawing in drawings] == [image.tobytes() for image in images]
    for drawing in drawings:
        assert drawing.shape == drawing.caption.split()[3]
        width, height = drawing.image.size
        box = drawing.box
        assert 0 <= box.left < box.right <= 1 and 0 <= box.top < box.bottom <= 1
        span = max((box.right - box.left) * width, (box.bottom - box.top) * height) / min(width, height)
        low, high = shapes.SIZES[drawing.caption.split()[1]]
        assert low - 1e-6 <= span <= high + 1e-6
