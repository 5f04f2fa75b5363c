"""The API's prompt check from the published model limits: a true lower bound of BERT's tokens, exact outcomes."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from model.captioner import EMBEDDED_MODEL_DIR
from shared.errors import PromptTooLong
from shared.intake.model_limits import BERT_WORDPIECE, ModelLimits, check_prompt_fits, min_wordpiece_tokens

LIMITS = ModelLimits(model="embedded", max_prompt_tokens=30, prompt_tokenizer=BERT_WORDPIECE)

# (text, BERT pieces the API counts): exact wherever BERT's pre-tokenizer makes one piece per word or mark.
PIECES = [
    ("a large red circle", 4),
    ("what is this?", 4),
    ("don't", 3),
    ("a_b", 3),  # "_" is punctuation to BERT
    ("1,000.5$", 6),
    ("...!!!", 6),
    ("a€b", 1),  # a symbol, not punctuation: part of the word
    ("a\tb\nc", 3),
    ("a\u2028b", 2),  # line separator: whitespace
    ("a\x1cb", 1),  # a control character is dropped, not a space
    ("a\u200bb", 1),  # zero-width space: a format character, dropped
    ("A\x85B", 1),  # NEL: a control character to BERT's cleaner
    ("\ufffd", 0),  # the replacement character is dropped
    ("\ue000", 0),  # private use: dropped
    ("\u0301", 0),  # a lone combining accent: stripped
    ("Ünïcödé", 1),
    ("x" * 150, 1),  # one long word is one [UNK]
    ("\u3000x\u3000y", 2),  # ideographic space
    ("猫猫猫猫", 1),  # a CJK run is one piece here, four tokens to BERT: a lower bound, not exact
    ("", 0),
]


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)


@pytest.mark.parametrize(("text", "pieces"), PIECES)
def test_the_piece_count_is_exact_and_never_above_the_real_token_count(
    tokenizer: object, text: str, pieces: int
) -> None:
    assert min_wordpiece_tokens(text) == pieces
    tokens = len(tokenizer(text, add_special_tokens=False).input_ids)  # type: ignore[operator]
    assert pieces <= tokens


@pytest.mark.parametrize(
    ("prompt", "limits", "refused"),
    [
        (" ".join(["a"] * 30), LIMITS, False),  # exactly the limit
        (" ".join(["a"] * 31), LIMITS, True),
        ("a," * 16, LIMITS, True),  # 32 pieces: 16 words and 16 commas
        ("猫" * 31, LIMITS, False),  # passes here; the worker's tokenizer refuses it
        (" ".join(["a"] * 31), None, False),  # no worker has published limits yet
        (" ".join(["a"] * 31), LIMITS.model_copy(update={"prompt_tokenizer": "other"}), False),
        (None, LIMITS, False),
    ],
)
def test_a_prompt_is_refused_only_when_it_surely_does_not_fit(
    prompt: str | None, limits: ModelLimits | None, refused: bool
) -> None:
    if not refused:
        check_prompt_fits(prompt, limits)
        return
    with pytest.raises(PromptTooLong) as caught:
        check_prompt_fits(prompt, limits)
    assert (caught.value.code, caught.value.status) == ("prompt_too_long", 422)
