"""The training-only shape targets match the drawings, follow a mirrored batch, and leave the model as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import embedded_architecture, shape_supervision, shapes, train

SIDE = embedded_architecture.MODEL_IMAGE_SIZE // embedded_architecture.PATCH_SIZE * shape_supervision.SUB_CELLS


def _drawn_cover(chunk: train.DrawnChunk) -> np.ndarray:
    """Each cell's share of pixels that differ from the image's corner: the shape, as the processor resized it."""
    pixels = chunk.pixels.astype(np.float32)
    background = pixels[:, :, :2, :2].mean(axis=(2, 3), keepdims=True)
    shape = (np.abs(pixels - background).max(axis=1) > 40).astype(np.float32)
    cell = shape.shape[-1] // SIDE
    return shape.reshape(len(shape), SIDE, cell, SIDE, cell).mean(axis=(2, 4))


def test_the_masks_are_where_the_drawn_shapes_are_in_the_models_square() -> None:
    chunk = train.draw_pixels(embedded_architecture.build_processor(), seed=11, count=60, evenly=True)
    captions_shapes = [caption.split()[3] for caption in chunk.captions]
    drawn = _drawn_cover(chunk)
    masks = shape_supervision.shape_masks(captions_shapes, chunk.boxes, SIDE) / 255
    assert np.array_equal(chunk.masks, shape_supervision.shape_masks(captions_shapes, chunk.boxes, SIDE))
    # Edges blur, JPEG rings and noise: a few per cent of a cell, where a shape is 5-80 % of the square.
    errors = np.abs(masks - drawn).mean(axis=(1, 2))
    assert errors.max() < 0.05, errors
    # The same check tells a box a patch away, or another shape in the same box, from the drawing.
    shifted = chunk.boxes + np.array([1, 0, 1, 0], dtype=np.float32) / (SIDE / shape_supervision.SUB_CELLS)
    moved = shape_supervision.shape_masks(captions_shapes, shifted, SIDE) / 255
    assert (np.abs(moved - drawn).mean(axis=(1, 2)) > errors).mean() > 0.9


def test_each_shape_fills_its_box_as_its_name_says() -> None:
    box = np.array([[0.25, 0.25, 0.75, 0.75]], dtype=np.float32)
    area = {name: shape_supervision.shape_masks([name], box, SIDE).astype(np.float64).sum() / 255 / SIDE**2
            for name in shapes.SHAPES}  # fmt: skip
    # A quarter of the square: the box's, pi/4 of it for the circle, half of it for the triangle.
    assert area["square"] == pytest.approx(0.25, abs=0.005)
    assert area["circle"] == pytest.approx(0.25 * np.pi / 4, abs=0.005)
    assert area["triangle"] == pytest.approx(0.125, abs=0.005)
    triangle = shape_supervision.shape_masks(["triangle"], box, SIDE)[0]
    assert triangle[SIDE // 4 + 1].sum() < triangle[3 * SIDE // 4 - 1].sum()  # apex up


def test_a_mirrored_drawing_gets_the_mirrored_box_and_mask() -> None:
    boxes = torch.tensor([[0.1, 0.2, 0.4, 0.5], [0.6, 0.1, 0.9, 0.3]])
    masks = torch.from_numpy(shape_supervision.shape_masks(["triangle", "circle"], boxes.numpy(), SIDE))
    mirrored_boxes, mirrored_masks = shape_supervision.mirror(boxes, masks, torch.tensor([True, False]))
    assert torch.allclose(mirrored_boxes[0], torch.tensor([0.6, 0.2, 0.9, 0.5]))
    assert torch.equal(mirrored_boxes[1], boxes[1]) and torch.equal(mirrored_masks[1], masks[1])
    redrawn = shape_supervision.shape_masks(["triangle"], mirrored_boxes[:1].numpy(), SIDE)[0]
    assert np.abs(mirrored_masks[0].numpy().astype(int) - redrawn.astype(int)).max() <= 1


def test_the_heads_learn_from_the_vision_tower_and_leave_the_trained_model_unhooked() -> None:
    model, processor = train.train(steps=2, batch_size=4, seed=3, drawings=8, processes=1)
    assert not model.git.image_encoder._forward_hooks
    heads = shape_supervision.ShapeHeads(model, torch.Generator().manual_seed(0))
    drawn = train.build_dataset(processor, 4, seed=5, processes=1, evenly=True)
    with pytest.raises(RuntimeError, match="no forward pass"):
        heads.loss(drawn.boxes, drawn.masks)
    model(input_ids=drawn.input_ids, pixel_values=train.normalise(processor, drawn.pixels))
    loss = heads.loss(drawn.boxes, drawn.masks)
    loss.backward()  # type: ignore[no-untyped-call]
    patch_embedding = model.git.image_encoder.vision_model.embeddings.patch_embedding.weight
    assert loss.item() > 0 and patch_embedding.grad is not None and patch_embedding.grad.abs().sum() > 0
    heads.detach()
    assert not model.git.image_encoder._forward_hooks
