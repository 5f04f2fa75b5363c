"""The training recipe's pieces, and the committed checkpoint's accuracy on drawings it never saw."""

from __future__ import annotations

import random
from pathlib import Path

from transformers import AutoProcessor

from model import Captioner, train

# Neither the training stream's seed nor the evaluation default: a third, fixed held-out set.
HELD_OUT_SEED = 20240
HELD_OUT_COUNT = 200


def test_tokenizer_vocabulary_round_trips_through_from_pretrained(tmp_path: Path) -> None:
    processor = train.build_processor()
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert None not in reloaded.tokenizer.get_vocab()
    caption = "a small green triangle on a black background"
    assert reloaded.tokenizer.decode(reloaded.tokenizer(caption).input_ids, skip_special_tokens=True) == caption


def test_processor_resizes_any_image_to_the_model_square() -> None:
    processor = train.build_processor()
    images, _ = train.draw_batch(random.Random(0), 4)
    pixel_values = processor.image_processor(images=images, return_tensors="pt").pixel_values
    assert tuple(pixel_values.shape) == (4, 3, train.MODEL_IMAGE_SIZE, train.MODEL_IMAGE_SIZE)


def test_model_generation_config_starts_with_cls_and_stops_at_sep() -> None:
    tokenizer = train.build_tokenizer()
    model = train.build_model(tokenizer)
    assert model.generation_config.bos_token_id == tokenizer.cls_token_id
    assert model.generation_config.eos_token_id == tokenizer.sep_token_id
    assert model.config.vision_config.image_size == train.MODEL_IMAGE_SIZE


def test_training_batches_are_deterministic_and_vary_in_size() -> None:
    first_images, first_captions = train.draw_batch(random.Random(9), 20)
    second_images, second_captions = train.draw_batch(random.Random(9), 20)
    assert first_captions == second_captions
    assert [image.tobytes() for image in first_images] == [image.tobytes() for image in second_images]
    assert len({image.size for image in first_images}) > 10


def test_trained_model_comes_back_ready_to_caption() -> None:
    model, processor = train.train(steps=3, batch_size=4, seed=1)
    assert model.training is False
    captions = Captioner(model, processor, name="fresh").caption(
        train.draw_batch(random.Random(2), 2)[0], max_new_tokens=3
    )
    assert len(captions) == 2 and all(isinstance(caption, str) for caption in captions)


def test_embedded_model_captions_held_out_drawings(embedded_captioner: Captioner) -> None:
    report = train.evaluate(embedded_captioner, n=HELD_OUT_COUNT, seed=HELD_OUT_SEED, batch_size=100)
    assert report["exact_match"] >= 0.95, report
