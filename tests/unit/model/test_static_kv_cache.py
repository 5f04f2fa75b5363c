"""Static KV cache (and so CUDA graphs through torch.compile) for GIT: what this transformers' ``generate`` does.

Issue #28 asked for a static cache behind a setting, off by default, where ``generate`` allows it. For GIT
it does not: its image tokens enter the cache without input ids, so ``generate`` sizes the static cache for
the text alone and builds a 4-D mask that GIT's forward cannot widen over the image tokens. This test pins
that refusal; when a transformers release lets it pass, it fails, and the setting becomes worth adding
(docs/gpu.md, "Knobs").
"""

from __future__ import annotations

import pytest
import torch

from model import Captioner
from model.reference_drawings import draw_set


def test_generate_refuses_a_static_cache_for_git(embedded_captioner: Captioner) -> None:
    images, _ = draw_set(2, 5)
    rows = embedded_captioner.preprocess(images)
    input_ids = torch.full((2, 1), embedded_captioner.tokenizer.cls_token_id)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="same number of dimensions"):
        embedded_captioner.model.generate(
            pixel_values=rows, input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            max_new_tokens=4, do_sample=False, cache_implementation="static",
        )  # fmt: skip


def test_the_default_dynamic_cache_captions_the_same_drawings(embedded_captioner: Captioner) -> None:
    images, expected = draw_set(8, 5)
    assert embedded_captioner.caption(images) == expected
