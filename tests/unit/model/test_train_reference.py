"""The independent drawer that the embedded model is measured on follows the world's rules without the trainer's code."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from model import reference_drawings, shapes


def _shape_pixels(pixels: np.ndarray) -> np.ndarray:
    # Far from both backgrounds' extremes in some channel and not grey: the fill, not the backdrop.
    spread = pixels.max(axis=2).astype(int) - pixels.min(axis=2).astype(int)
    mask: np.ndarray = spread > 60
    return mask


def test_drawer_shares_no_code_with_the_trainers_drawer() -> None:
    tree = ast.parse(inspect.getsource(reference_drawings))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.startswith("model") for name in imported), imported
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert "ImageDraw" not in names and "Draw" not in names


def test_same_seed_draws_the_same_set_and_jpeg_changes_the_pixels() -> None:
    first_images, first_captions = reference_drawings.draw_set(6, seed=4)
    again_images, again_captions = reference_drawings.draw_set(6, seed=4)
    jpeg_images, jpeg_captions = reference_drawings.draw_set(6, seed=4, jpeg=True)
    assert first_captions == again_captions == jpeg_captions
    assert [image.tobytes() for image in first_images] == [image.tobytes() for image in again_images]
    assert all(a.size == b.size and a.tobytes() != b.tobytes() for a, b in zip(first_images, jpeg_images, strict=True))


def test_captions_use_only_the_models_words() -> None:
    _, captions = reference_drawings.draw_set(40, seed=5)
    assert {word for caption in captions for word in caption.split()} <= set(shapes.caption_vocabulary())
    assert len(set(captions)) > 20


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("kind", reference_drawings.KINDS)
def test_shapes_keep_the_rules_on_span_and_stay_whole(kind: str, size: str) -> None:
    rng = np.random.default_rng(6)
    for _ in range(8):
        image = reference_drawings.draw(kind, "red", size, "white", rng)
        pixels = np.asarray(image)
        short = min(image.size)
        assert short >= 32 and max(image.size) <= min(1024, 3 * short + 1)
        mask = _shape_pixels(pixels)
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        span = max(rows[-1] - rows[0] + 1, columns[-1] - columns[0] + 1) / short
        if size == "small":
            assert span <= 0.4 + 2 / short
        else:
            assert span >= 0.6 - 2 / short
        if kind != "triangle":  # cut by the border, a circle or square would be narrower one way
            assert abs((rows[-1] - rows[0]) - (columns[-1] - columns[0])) <= 2
        corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]].astype(int)
        assert (255 - corners <= shapes.BACKGROUND_TOLERANCE).all() or mask[[0, 0, -1, -1], [0, -1, 0, -1]].any()
