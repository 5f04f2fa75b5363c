"""Captioner: loading, batching, prompts and errors, against the committed tiny GIT checkpoint."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoProcessor

from model import EMBEDDED_MODEL_DIR, Captioner, ModelLoadError, shapes
from model.checkpoints import resolve_device, resolve_dtype
from model.standin import build_standin
from shared.settings import EMBEDDED_MODEL


def _drawings(count: int, seed: int, *, size: str | None = None) -> tuple[list[Image.Image], list[str]]:
    rng = random.Random(seed)
    images, captions = [], []
    for _ in range(count):
        spec = shapes.random_spec(rng)
        if size is not None:
            spec = shapes.ShapeSpec(spec.shape, spec.colour, size, spec.background)
        images.append(shapes.draw_shape(spec.shape, spec.colour, spec.size, spec.background, rng=rng))
        captions.append(spec.caption)
    return images, captions


def test_embedded_checkpoint_loads_like_a_hub_checkpoint() -> None:
    processor = AutoProcessor.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR, local_files_only=True)
    assert type(model).__name__ == "GitForCausalLM"
    assert type(processor).__name__ == "GitProcessor"
    vocab = processor.tokenizer.get_vocab()
    # Built from a vocab file, the tokenizer once round-tripped with every word turned into None.
    assert None not in vocab and {"[CLS]", "[SEP]", "[PAD]", "red", "circle"} <= set(vocab)
    assert processor.tokenizer.convert_ids_to_tokens(processor.tokenizer("a red circle").input_ids) == [
        "[CLS]", "a", "red", "circle", "[SEP]",
    ]  # fmt: skip
    generation = model.generation_config
    assert (generation.bos_token_id, generation.eos_token_id, generation.pad_token_id) == (
        processor.tokenizer.cls_token_id, processor.tokenizer.sep_token_id, processor.tokenizer.pad_token_id,
    )  # fmt: skip


def test_embedded_weights_are_small_safetensors() -> None:
    weights = EMBEDDED_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 10 * 1024 * 1024


def test_load_records_name_device_dtype_and_timings(embedded_captioner: Captioner) -> None:
    # The folder's name is what the service's setting calls it, so job records and /readyz agree.
    assert embedded_captioner.name == EMBEDDED_MODEL
    assert embedded_captioner.device == torch.device("cpu")
    assert embedded_captioner.dtype == torch.float32
    assert embedded_captioner.load_time_s > 0
    assert embedded_captioner.warmup_time_s > 0


def test_default_red_circle_is_captioned(embedded_captioner: Captioner) -> None:
    image = shapes.draw_shape("circle", "red")
    assert embedded_captioner.caption([image]) == ["a large red circle on a white background"]


def test_batch_captions_equal_one_by_one_captions(embedded_captioner: Captioner) -> None:
    images, _ = _drawings(6, seed=11)
    one_by_one = [embedded_captioner.caption([image])[0] for image in images]
    assert embedded_captioner.caption(images) == one_by_one


def test_batch_with_prompt_equals_one_by_one_with_prompt(embedded_captioner: Captioner) -> None:
    images, _ = _drawings(5, seed=12)
    one_by_one = [embedded_captioner.caption([image], prompt="a")[0] for image in images]
    assert embedded_captioner.caption(images, prompt="a") == one_by_one


def test_prompt_is_continued_and_stripped_for_a_batch(embedded_captioner: Captioner) -> None:
    images, captions = _drawings(6, seed=13, size="large")
    answers = embedded_captioner.caption(images, prompt="A large ")
    assert answers == [caption.removeprefix("a large ") for caption in captions]


def test_prompt_of_unknown_words_still_gives_one_caption_per_image(embedded_captioner: Captioner) -> None:
    images, _ = _drawings(3, seed=14)
    answers = embedded_captioner.caption(images, prompt="what is this?", max_new_tokens=5)
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)


def test_long_prompt_and_caption_are_capped_at_the_text_positions(embedded_captioner: Captioner) -> None:
    images, _ = _drawings(2, seed=16)
    prompt = " ".join(["a"] * 20)  # with 30 new tokens, past the embedded model's 32 text positions
    answers = embedded_captioner.caption(images, prompt=prompt, max_new_tokens=30, min_new_tokens=30)
    assert len(answers) == 2
    with pytest.raises(ValueError, match="prompt is 40 tokens"):
        embedded_captioner.caption(images, prompt=" ".join(["a"] * 40))


@pytest.mark.parametrize("image_size", [(500, 300), (300, 500), (33, 33), (1024, 1024)])
def test_images_of_any_size_are_captioned(embedded_captioner: Captioner, image_size: tuple[int, int]) -> None:
    image = shapes.draw_shape("triangle", "blue", "large", "black", image_size=image_size, rng=random.Random(4))
    assert embedded_captioner.caption([image]) == ["a large blue triangle on a black background"]


def test_images_of_mixed_sizes_and_modes_share_a_batch(embedded_captioner: Captioner) -> None:
    square = shapes.draw_shape("square", "green", "large", "white", image_size=(300, 200))
    circle = shapes.draw_shape("circle", "yellow", "large", "black").convert("P")
    transparent = shapes.draw_shape("circle", "red", "large", "white").convert("RGBA")
    assert embedded_captioner.caption([square, circle, transparent]) == [
        "a large green square on a white background",
        "a large yellow circle on a black background",
        "a large red circle on a white background",
    ]


def test_empty_batch_gives_no_captions(embedded_captioner: Captioner) -> None:
    assert embedded_captioner.caption([]) == []


def test_token_counts_are_remembered_and_stay_exact() -> None:
    captioner = Captioner.load(EMBEDDED_MODEL_DIR, device="cpu")
    captioner.tokenizer = tokenizer = mock.Mock(wraps=captioner.tokenizer)
    texts = ["a large red circle on a white background", "  What is it?  ", "", None]
    first = [captioner.count_tokens(text) for text in texts]
    assert first == [8, 4, 0, 0]  # "what is it ?": the BERT tokenizer splits off the question mark
    assert [captioner.count_tokens(text) for text in texts] == first
    assert tokenizer.call_count == 2  # the two non-empty texts, once each


def test_fixed_length_generation_and_beam_search(embedded_captioner: Captioner) -> None:
    images, captions = _drawings(2, seed=15)
    assert embedded_captioner.caption(images, num_beams=3) == captions
    short = embedded_captioner.caption(images, max_new_tokens=2)
    assert [len(caption.split()) for caption in short] == [2, 2]


@pytest.mark.parametrize(
    "kwargs", [{"max_new_tokens": 0}, {"num_beams": 0}, {"min_new_tokens": 40, "max_new_tokens": 30}]
)
def test_bad_generation_arguments_are_refused(embedded_captioner: Captioner, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        embedded_captioner.caption([shapes.draw_shape("circle", "red")], **kwargs)  # type: ignore[arg-type]


def test_missing_folder_raises_model_load_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        Captioner.load(missing)


def test_hub_id_absent_from_the_cache_raises_model_load_error() -> None:
    with pytest.raises(ModelLoadError, match="captionizer-test/not-a-model"):
        Captioner.load("captionizer-test/not-a-model")


def test_malformed_folder_raises_model_load_error(tmp_path: Path) -> None:
    shutil.copytree(EMBEDDED_MODEL_DIR, tmp_path, dirs_exist_ok=True, copy_function=shutil.copyfile)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        Captioner.load(tmp_path, warmup=False)


def test_checkpoint_folder_is_named_after_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-checkpoint"
    shutil.copytree(EMBEDDED_MODEL_DIR, folder, copy_function=shutil.copyfile)
    captioner = Captioner.load(folder, device="cpu", warmup=False)
    assert (captioner.name, captioner.warmup_time_s) == ("my-checkpoint", 0.0)


def test_device_and_dtype_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    with pytest.raises(ValueError, match="device"):
        resolve_device("abacus")


def test_bfloat16_on_cpu_still_captions() -> None:
    captioner = Captioner.load(device="cpu", dtype="bfloat16", warmup=False)
    assert captioner.dtype == torch.bfloat16
    assert captioner.caption([shapes.draw_shape("circle", "red")]) == ["a large red circle on a white background"]


@pytest.fixture
def full_size_checkpoint(tmp_path: Path) -> Iterator[Path]:
    """git-base's architecture, processor and tokenizer with random weights (about 700 MB, removed afterwards)."""
    folder = build_standin(tmp_path / "git-base-standin")
    yield folder
    # pytest keeps the last three runs' tmp_path folders; do not leave 700 MB in each.
    (folder / "model.safetensors").unlink()


def test_full_size_git_checkpoint_loads_and_captions(full_size_checkpoint: Path) -> None:
    captioner = Captioner.load(full_size_checkpoint, device="cpu")
    assert (captioner.name, captioner.model.config.vision_config.image_size) == (full_size_checkpoint.name, 224)
    image = shapes.draw_shape("circle", "red", image_size=(500, 300))
    captions = captioner.caption([image, image], max_new_tokens=3)
    # No end token: the stand-in always writes max_new_tokens tokens, so benchmark work is fixed.
    assert len(captions) == 2 and captions[0] == captions[1] and captions[0]
    assert captioner.model.generation_config.eos_token_id is None
