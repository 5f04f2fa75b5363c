"""The loaded model's limits, published by the caption workers so the API can refuse what cannot fit.

The API never imports transformers, so it cannot count a prompt's tokens. Each caption worker publishes
its model's limits in Redis next to its heartbeat (:func:`publish_model_limits`); the API reads them
(:func:`read_model_limits`) and refuses a prompt whose tokens *surely* exceed them
(:func:`check_prompt_fits`). The bound is a lower one: for BERT WordPiece tokenizers, which every GIT
checkpoint uses, each word and each punctuation mark is at least one token. A prompt that passes this
check and still does not fit is refused by the worker with the same code, ``prompt_too_long``.
"""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from shared.errors import PromptTooLong
from shared.keys import Keys

#: ``ModelLimits.prompt_tokenizer`` of a BERT WordPiece tokenizer (the only kind the API can bound).
BERT_WORDPIECE = "bert-wordpiece"

# BERT's normaliser (tokenizers' BertNormalizer) drops NUL, U+FFFD and every "other" character (Cc, Cf,
# Cn, Co, Cs) but tab, newline and carriage return (clean_text), and, when it lower-cases, combining
# marks (strip_accents): none of them ever makes a token of its own.
_BERT_WHITESPACE = frozenset(" \t\n\r")
_BERT_DROPPED = frozenset("\x00\ufffd")


class ModelLimits(BaseModel):
    """What the loaded model can take, as a caption worker publishes it."""

    model: str = Field(description="The model's name, as jobs report it.")
    max_prompt_tokens: int = Field(ge=0, description="Longest prompt, in tokens, the model's text positions take.")
    prompt_tokenizer: str = Field(description='"bert-wordpiece", or another kind the API cannot bound.')


async def publish_model_limits(redis: Redis, keys: Keys, limits: ModelLimits, *, ttl_s: int) -> None:
    """Store ``limits`` for the API; the key expires ``ttl_s`` after the last worker stops refreshing it."""
    await redis.set(keys.model_limits(), limits.model_dump_json(), ex=ttl_s)


async def read_model_limits(redis: Redis, keys: Keys) -> ModelLimits | None:
    """The limits a caption worker published, or None when none is up (or the record is unreadable)."""
    raw = await redis.get(keys.model_limits())
    if raw is None:
        return None
    try:
        return ModelLimits.model_validate_json(raw)
    except ValidationError:
        return None


def check_prompt_fits(prompt: str | None, limits: ModelLimits | None) -> None:
    """Raise PromptTooLong when ``prompt`` surely takes more tokens than ``limits`` allow.

    Does nothing without limits, or for tokenizers whose tokens it cannot bound from the text.
    """
    if not prompt or limits is None or limits.prompt_tokenizer != BERT_WORDPIECE:
        return
    at_least = min_wordpiece_tokens(prompt)
    if at_least > limits.max_prompt_tokens:
        raise PromptTooLong(
            f"the prompt is at least {at_least} tokens; the model ({limits.model}) takes at most "
            f"{limits.max_prompt_tokens}"
        )


def min_wordpiece_tokens(text: str) -> int:
    """A lower bound of the tokens a BERT WordPiece tokenizer makes of ``text``, without its vocabulary.

    BERT's pre-tokenizer splits on whitespace and makes every punctuation character a piece of its own;
    WordPiece then gives each piece at least one token (``[UNK]`` when nothing matches). CJK characters
    are split one by one as well; counting a run of them as one piece keeps the bound a lower one.
    """
    pieces = 0
    in_word = False
    for char in text:
        category = unicodedata.category(char)
        if char in _BERT_WHITESPACE:
            in_word = False
        elif char in _BERT_DROPPED or category.startswith("C") or category == "Mn":
            continue
        elif char.isspace():
            in_word = False
        elif _is_bert_punctuation(char):
            pieces += 1
            in_word = False
        elif not in_word:
            pieces += 1
            in_word = True
    return pieces


def _is_bert_punctuation(char: str) -> bool:
    """BERT's ``_is_punctuation``: ASCII non-alphanumeric printables, and Unicode category P*."""
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")
