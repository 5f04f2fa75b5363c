"""model.standin: the git-base stand-in has git-base's architecture, processor and vocabulary, built from code.

The expected values are microsoft/git-base(-textcaps)'s published config.json and preprocessor_config.json,
written here so the check needs nothing outside the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from model.standin import SPECIAL_TOKEN_IDS, VOCAB_SIZE, build_vocabulary

#: microsoft/git-base-textcaps' config.json, the fields that shape the network.
GIT_BASE_TEXT = {
    "model_type": "git", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 6,
    "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "max_position_embeddings": 1024, "layer_norm_eps": 1e-12, "bos_token_id": 101, "eos_token_id": 102,
    "pad_token_id": 0, "tie_word_embeddings": False,
}  # fmt: skip
GIT_BASE_VISION = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "image_size": 224, "patch_size": 16, "num_channels": 3, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
#: microsoft/git-base-textcaps' preprocessor_config.json.
GIT_BASE_PROCESSOR = {
    "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
    "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True, "resample": 3,
    "rescale_factor": 1 / 255, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}  # fmt: skip


def test_config_is_git_base_architecture(standin_files: Path) -> None:
    config = AutoConfig.from_pretrained(standin_files, local_files_only=True)
    text = config.to_dict()
    assert {name: text[name] for name in GIT_BASE_TEXT} == GIT_BASE_TEXT
    vision = config.vision_config.to_dict()
    assert {name: vision[name] for name in GIT_BASE_VISION} == GIT_BASE_VISION


def test_image_processor_is_git_base_clip_processor(standin_files: Path) -> None:
    processor = AutoProcessor.from_pretrained(standin_files, local_files_only=True)  # type: ignore[no-untyped-call]
    assert type(processor).__name__ == "GitProcessor"
    image_settings = processor.image_processor.to_dict()
    for name, expected in GIT_BASE_PROCESSOR.items():
        assert image_settings[name] == pytest.approx(expected), name


def test_vocabulary_has_bert_size_and_special_ids() -> None:
    vocab = build_vocabulary()
    assert len(vocab) == VOCAB_SIZE == 30522
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    assert {token: vocab[token] for token in SPECIAL_TOKEN_IDS} == {
        "[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103,
    }  # fmt: skip


def test_tokenizer_survives_a_round_trip_through_from_pretrained(standin_files: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(standin_files, local_files_only=True)
    vocab = tokenizer.get_vocab()
    # Built with vocab_file=, a save and reload once turned every word into None.
    assert None not in vocab and vocab == build_vocabulary()
    ids = tokenizer("A red circle on a WHITE background").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "[CLS]", "a", "red", "circle", "on", "a", "white", "background", "[SEP]",
    ]  # fmt: skip
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle on a white background"
    assert tokenizer.convert_ids_to_tokens(tokenizer("zebra").input_ids)[1:-1] == ["z", "##e", "##b", "##r", "##a"]


def test_generation_has_no_end_token_so_work_per_caption_is_fixed(standin_files: Path) -> None:
    generation = (standin_files / "generation_config.json").read_text()
    assert '"eos_token_id"' not in generation and '"bos_token_id": 101' in generation
