"""A stand-in for microsoft/git-base built from code: its architecture, processor and vocabulary size, random weights.

The tests and benchmarks need a full-size GIT checkpoint, but nothing here may download one.
``GitConfig()``'s defaults are git-base's architecture (6-layer text decoder and 12-layer ViT-B/16
at 224 px, width 768, 30522 tokens); the image processor is CLIP's as git-base configures it; the
tokenizer is BERT-style with BERT's special-token ids and a generated vocabulary of the same size.
Without an end token, generation always runs to ``max_new_tokens``, so work per caption is fixed.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import BertTokenizer, CLIPImageProcessor, GenerationConfig, GitConfig, GitForCausalLM, GitProcessor

#: bert-base-uncased's vocabulary size, which git-base's word embeddings are shaped for.
VOCAB_SIZE = 30522
#: git-base's input side: the shorter edge is resized to it, then the centre square is cropped.
IMAGE_SIZE = 224
#: OpenAI CLIP's normalisation, which git-base's processor uses.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
#: PIL's BICUBIC, git-base's resampling filter.
RESAMPLE_BICUBIC = 3
#: BERT's special tokens at BERT's ids: GIT starts a caption with [CLS] (101) and ends it with [SEP] (102).
SPECIAL_TOKEN_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
#: Words the stand-in tokenizes whole, so prompts and captions in tests read as words.
_WORDS = (
    "a", "an", "the", "of", "on", "in", "with", "and", "is", "are", "this", "that", "what", "there", "picture",
    "photo", "image", "background", "red", "green", "blue", "yellow", "black", "white", "circle", "square",
    "triangle", "small", "large",
)  # fmt: skip


def build_vocabulary() -> dict[str, int]:
    """A BERT-style vocabulary of ``VOCAB_SIZE`` tokens: specials at BERT's ids, words, characters, fillers."""
    tokens = [*_WORDS, *string.ascii_lowercase, *string.digits, *string.punctuation]
    tokens += [f"##{char}" for char in string.ascii_lowercase + string.digits]
    vocab = dict(SPECIAL_TOKEN_IDS)
    free_ids = (index for index in range(VOCAB_SIZE) if index not in SPECIAL_TOKEN_IDS.values())
    for token in dict.fromkeys(tokens):
        vocab[token] = next(free_ids)
    # BERT keeps unused slots as "[unusedN]"; the rest of the ids are filled the same way.
    for number, index in enumerate(free_ids):
        vocab[f"[unused{number}]"] = index
    return vocab


def build_processor() -> GitProcessor:
    """git-base's processor: CLIP image processing at 224 px and the generated BERT-style tokenizer."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=True,
        resample=RESAMPLE_BICUBIC,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    # vocab= rather than vocab_file=: built from a file, save/reload turned every word into None.
    tokenizer = BertTokenizer(vocab=build_vocabulary(), do_lower_case=True, model_max_length=512)
    return GitProcessor(image_processor=image_processor, tokenizer=tokenizer)  # type: ignore[no-untyped-call]


def build_config() -> GitConfig:
    """git-base's architecture (``GitConfig()``'s defaults)."""
    return GitConfig()


def build_standin(folder: Path, *, with_weights: bool = True, seed: int = 0, config: GitConfig | None = None) -> Path:
    """Save the stand-in checkpoint into ``folder``; without weights only its config and processor files.

    ``config`` replaces git-base's architecture (a smaller one proves a procedure quickly on a CPU).
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = config or build_config()
    # No end token: every caption is exactly max_new_tokens long, so timings compare like with like.
    generation = GenerationConfig(bos_token_id=config.bos_token_id, pad_token_id=config.pad_token_id)  # type: ignore[no-untyped-call]
    if with_weights:
        torch.manual_seed(seed)
        model = GitForCausalLM(config)
        model.generation_config = generation
        model.save_pretrained(folder)
    else:
        config.save_pretrained(folder)
        generation.save_pretrained(folder)
    # The Hub's layout for git-base (transformers 4): preprocessor_config.json beside the tokenizer's files.
    processor = build_processor()
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    return folder
