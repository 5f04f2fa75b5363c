"""The embedded model's design: its vocabulary, its image processor and its (tiny) GIT network.

What :mod:`model.train` trains and saves to ``model/embedded``; git-base's stand-in for
tests and benchmarks is :mod:`model.standin`.
"""

from __future__ import annotations

from transformers import BertTokenizer, CLIPImageProcessor, GenerationConfig, GitConfig, GitForCausalLM, GitProcessor

from model import shapes

#: Side of the square the image processor resizes every input to, in pixels.
MODEL_IMAGE_SIZE = 128
#: Side of the square patches the vision encoder cuts the image into.
PATCH_SIZE = 16
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer() -> BertTokenizer:
    """A lower-casing BERT tokenizer over the caption words, with BERT's special tokens."""
    tokens = [*SPECIAL_TOKENS, *shapes.caption_vocabulary()]
    # vocab= rather than vocab_file=: built from a file, save/reload turned every word into None.
    return BertTokenizer(vocab={token: index for index, token in enumerate(tokens)}, do_lower_case=True)


def build_processor() -> GitProcessor:
    """GIT's processor with CLIP normalisation, the whole image resized (squeezed) to the model's square.

    Not centre-cropped as microsoft/git-base's is: a shape may lie anywhere in an image of up to 3:1,
    and a crop would cut it off. Squeezing keeps the rule that decides the size readable: the span
    along the image's shorter side is unchanged, so a shape is large when its longer normalised
    extent is at least 60 % and small when it is at most 40 %.
    """
    image_processor = CLIPImageProcessor(
        size={"height": MODEL_IMAGE_SIZE, "width": MODEL_IMAGE_SIZE},
        crop_size={"height": MODEL_IMAGE_SIZE, "width": MODEL_IMAGE_SIZE},  # unused; not CLIP's 224
        do_center_crop=False,
    )
    return GitProcessor(image_processor=image_processor, tokenizer=build_tokenizer())  # type: ignore[no-untyped-call]


def build_model(tokenizer: BertTokenizer) -> GitForCausalLM:
    """A small ``GitForCausalLM``: 2-layer ViT on 16-pixel patches of 128 px, 2-layer text decoder, width 96.

    128 px on 16-pixel patches rather than 64 px on 8: the same 64 patches, so the same cost per layer,
    but a small shape squeezed from 3:1 is 8.5 pixels across rather than 4. At 64 px most misses were
    small circles and squares in images wider than 2:1, read as one another, and triangles near the
    size boundary (README, "The model"). Two vision layers rather than four pay for the 64 patches;
    GIT's decoder layers attend over the image tokens too.
    """
    vision_config = {
        "hidden_size": 96,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": MODEL_IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
    }
    config = GitConfig(
        vision_config=vision_config,
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = GitForCausalLM(config)
    # GIT starts every caption with [CLS] and ends it with [SEP], as microsoft/git-base does.
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=20,
    )
    return model
