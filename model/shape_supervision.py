"""Training-only supervision of where the shape lies, beside the caption's loss.

A caption says "small" or "large" in one token. Once most drawings are right, that token's loss says
little about the drawings near the size boundary, and the model learnt to read a 1-3 px sliver of a
16-pixel patch as more of the shape than it is (README, "The model"). So during training two small
heads read the vision tower's output, and are thrown away after it:

* each patch's token predicts how much of each of its ``SUB_CELLS`` x ``SUB_CELLS`` cells the shape
  covers: the patch embedding has to keep how far into a patch an edge reaches, and the outline that
  tells a small circle from a small square;
* the class token predicts the shape's box and its span, the quantity the size rule is about.

Targets come from what the drawer knows (``shapes.Drawing``'s shape and box), not from the pixels, so
blur, noise and JPEG cannot teach the heads a wrong outline. The saved checkpoint is the plain
``GitForCausalLM``: nothing here reaches inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import GitForCausalLM

#: Cells a side each patch's target is cut into.
SUB_CELLS = 4
#: Weight of the heads' losses against the caption's.
SUPERVISION_WEIGHT = 1.0
_SUPERSAMPLE = 4  # points a side per cell at which a mask is sampled


def shape_masks(shapes: Sequence[str], boxes: np.ndarray, side: int) -> np.ndarray:
    """How much of each of ``side`` x ``side`` cells of the model's square each shape covers, as uint8 0-255.

    ``boxes`` is ``(N, 4)``: each ``shapes.Box`` (fractions of the image's width and height, so the same
    in the squeezed square). The shapes are the drawer's: a circle fills its box as an ellipse once
    squeezed, a square its whole box, a triangle the apex-up triangle on its box's bottom edge.
    """
    points = side * _SUPERSAMPLE
    centres = (np.arange(points, dtype=np.float32) + 0.5) / points
    x, y = centres[None, None, :], centres[None, :, None]
    left, top, right, bottom = (boxes[:, i, None, None].astype(np.float32) for i in range(4))
    middle, half_width, half_height = (left + right) / 2, (right - left) / 2, (bottom - top) / 2
    in_box = (x >= left) & (x <= right) & (y >= top) & (y <= bottom)
    in_circle = ((x - middle) / half_width) ** 2 + ((y - (top + bottom) / 2) / half_height) ** 2 <= 1
    # Apex at the top middle: a point is inside when the triangle's half-width at its height reaches it.
    in_triangle = in_box & (np.abs(x - middle) <= (y - top) / (bottom - top) * half_width)
    kinds = np.asarray(shapes)[:, None, None]
    inside = np.where(kinds == "circle", in_circle, np.where(kinds == "square", in_box, in_triangle))
    cover: np.ndarray = inside.reshape(len(boxes), side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(2, 4))
    masks: np.ndarray = np.rint(cover * 255).astype(np.uint8)
    return masks


def mirror(boxes: torch.Tensor, masks: torch.Tensor, mirrored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes and masks of drawings flipped left to right where ``mirrored`` says, as the batch's pixels are."""
    flipped = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], dim=1)
    boxes = torch.where(mirrored[:, None], flipped, boxes)
    masks = torch.where(mirrored[:, None, None], masks.flip(-1), masks)
    return boxes, masks


class ShapeHeads(torch.nn.Module):
    """The two training-only heads, fed by a hook on the model's vision tower during its forward pass."""

    def __init__(self, model: GitForCausalLM, generator: torch.Generator) -> None:
        super().__init__()
        embeddings = model.git.image_encoder.vision_model.embeddings
        patches: torch.nn.Conv2d = embeddings.patch_embedding
        self.grid = math.isqrt(embeddings.position_embedding.num_embeddings - 1)  # patches a side, past the class token
        self.cells = torch.nn.Linear(patches.out_channels, SUB_CELLS * SUB_CELLS)
        self.box = torch.nn.Linear(patches.out_channels, 5)  # left, top, right, bottom, span
        for layer in (self.cells, self.box):
            torch.nn.init.normal_(layer.weight, std=0.02, generator=generator)
            torch.nn.init.zeros_(layer.bias)
        self._features: torch.Tensor | None = None
        self._hook = model.git.image_encoder.register_forward_hook(self._keep_features)

    def loss(self, boxes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Both heads' binary cross-entropy on the last forward pass's images: ``(B, 4)`` boxes, uint8 masks."""
        if self._features is None:
            raise RuntimeError("no forward pass of the model since the last loss")
        features, self._features = self._features, None
        batch = len(boxes)
        # (B, side, side) to (B, patches, cells), patches row by row as the patch embedding flattens them.
        grid, cells = self.grid, SUB_CELLS
        per_patch = masks.view(batch, grid, cells, grid, cells).permute(0, 1, 3, 2, 4).reshape(batch, grid * grid, -1)
        span = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        box_target = torch.cat([boxes, span[:, None]], dim=1).clamp(0, 1)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        cell_loss = bce(self.cells(features[:, 1:]).float(), per_patch.float() / 255)
        return cell_loss + bce(self.box(features[:, 0]).float(), box_target)

    def detach(self) -> None:
        """Stop reading the model's forward passes: the trained model captions without the heads."""
        self._hook.remove()
        self._features = None

    def _keep_features(self, module: torch.nn.Module, args: object, output: object) -> None:
        self._features = output.last_hidden_state  # type: ignore[attr-defined]
