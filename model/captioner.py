"""The captioner: loads a GIT checkpoint once and captions batches of PIL images in one ``generate`` call."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import GitForCausalLM

from model.checkpoints import checkpoint_revision, load_checkpoint, resolve_device, resolve_dtype
from model.errors import CaptionerError, ModelLoadError, PromptTooLongError
from model.images import to_rgb

logger = logging.getLogger(__name__)

#: Folder of the tiny checkpoint committed with the code (trained by ``python -m model.train``). Like any
#: folder, users see it by its name; the service's setting for it is ``shared.settings.EMBEDDED_MODEL``.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "embedded"

# "owner/name" or "name" as the Hub spells repository ids; anything else can only be a folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WARMUP_IMAGE_SIDE = 8
#: Distinct prompts and captions whose tokens a captioner remembers.
_ENCODED_TEXTS = 4096
# Tokenizers whose pre-tokenizer splits on whitespace and punctuation, each piece giving at least one token.
_WORDPIECE_PRE_TOKENIZER = "BertPreTokenizer"


class Captioner:
    """A loaded GIT checkpoint with its processor; ``caption`` turns a batch of images into strings."""

    def __init__(self, model: GitForCausalLM, processor: Any, *, name: str, revision: str = "unknown") -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        #: Shown to users: "embedded", a Hub id, or a checkpoint folder's name.
        self.name = name
        #: What identifies the weights, for the caption cache's key (``model.checkpoints.checkpoint_revision``).
        self.revision = revision
        self.device: torch.device = model.device
        self.dtype: torch.dtype = model.dtype
        self.load_time_s = 0.0
        self.warmup_time_s = 0.0
        # GIT starts generation from [CLS]; read once rather than per call.
        self._bos_token_id = _bos_token_id(model, self.tokenizer)
        # Text positions (prompt and caption, not image patches) beyond this have no position embedding.
        self._max_text_tokens: int = model.config.max_position_embeddings
        #: Longest prompt, in tokens, this checkpoint takes: its text positions less [CLS] and one new token.
        self.max_prompt_tokens = self._max_text_tokens - 2
        #: The side, in pixels, the processor resizes images to: the one source of the model's input size.
        self.input_size_px = input_size_px(processor.image_processor)
        #: "bert-wordpiece" when every word or punctuation mark of a prompt is at least one token (GIT's BERT
        #: tokenizer), which lets the API bound a prompt's tokens without the tokenizer; else "other".
        self.prompt_tokenizer = _prompt_tokenizer_kind(self.tokenizer)
        # Every job's usage counts its prompt's and its caption's tokens, and both repeat (a cache hit's caption
        # always does): the tokenizer call was 6 % of a worker's CPU on the cache's hit path (bench/README.md,
        # "The caption cache"). Bounded, per captioner: texts are at most a prompt's or a caption's length.
        self._encode_prompt = functools.lru_cache(maxsize=_ENCODED_TEXTS)(self._encode_text)

    @classmethod
    def load(
        cls,
        path_or_hub_id: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        allow_download: bool = False,
        warmup: bool = True,
    ) -> Captioner:
        """Load a GIT checkpoint folder or Hub id (``None``: the embedded model) onto a device, ready to caption.

        Args:
            device: "auto" (CUDA, else Apple MPS, else CPU) or a torch device string such as "cuda:1".
            dtype: "auto" (float16 on CUDA, float32 elsewhere), "float16", "bfloat16" or "float32".
            allow_download: let a Hub id be fetched; otherwise only local files and the local cache are read.
            warmup: run one tiny generation now, so the first real request does not pay for it.

        Raises:
            ModelLoadError: the checkpoint cannot be found or loaded.
            ValueError: ``device`` or ``dtype`` is not understood.
        """
        source, name = _resolve_source(path_or_hub_id)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        started = time.perf_counter()
        model, processor = load_checkpoint(source, torch_device, torch_dtype, local_files_only=not allow_download)
        captioner = cls(model, processor, name=name, revision=checkpoint_revision(source, model))
        captioner.load_time_s = time.perf_counter() - started
        if warmup:
            captioner.warmup()
        logger.info(
            "loaded captioner %s on %s (%s) in %.2f s, warm-up %.2f s",
            name, torch_device, torch_dtype, captioner.load_time_s, captioner.warmup_time_s,
        )  # fmt: skip
        return captioner

    def warmup(self) -> float:
        """Caption one tiny blank image, paying one-off costs (allocator, kernels) now; returns seconds taken."""
        started = time.perf_counter()
        self.caption([Image.new("RGB", (_WARMUP_IMAGE_SIDE, _WARMUP_IMAGE_SIDE))], max_new_tokens=1)
        self.warmup_time_s = time.perf_counter() - started
        return self.warmup_time_s

    def caption(
        self,
        images: Sequence[Image.Image],
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        min_new_tokens: int | None = None,
    ) -> list[str]:
        """Caption every image in one batched ``generate`` call; returns one stripped string per image, in order.

        With ``prompt``, GIT continues the text (how a VQA checkpoint answers a question), and the
        prompt is removed from each answer. ``max_new_tokens`` is capped at what the checkpoint's
        text positions leave after the prompt (the embedded model has 32).

        Raises:
            PromptTooLongError: the prompt fills every text position (also a ValueError).
            ValueError: a generation argument is out of range.
        """
        _check_generation_args(max_new_tokens, num_beams, min_new_tokens)
        if not images:
            return []
        return self.generate_from_tensors(
            self.preprocess(images), prompt, [max_new_tokens] * len(images), num_beams, min_new_tokens
        )

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's input for ``images`` (resized, normalised pixel values, float32 on the CPU).

        Thread-safe and independent of the other images, so callers run it in parallel, one image
        per call, and hand the rows to :meth:`generate_from_tensors` (``torch.cat`` joins them).
        """
        pixel_values: torch.Tensor = self.processor.image_processor(
            images=[to_rgb(image) for image in images], return_tensors="pt"
        ).pixel_values
        return pixel_values

    @torch.inference_mode()
    def generate_from_tensors(
        self,
        pixel_values: torch.Tensor | Sequence[torch.Tensor],
        prompt: str | None,
        max_new_tokens: Sequence[int],
        num_beams: int = 1,
        min_new_tokens: int | None = None,
    ) -> list[str]:
        """Caption preprocessed images (rows of :meth:`preprocess`), each within its own ``max_new_tokens``.

        Rows with different token limits share one ``generate`` call run to the largest limit; each
        row is then cut to its own. Greedy decoding (``num_beams=1``) picks every token from the ones
        before it only, so a row cut at N tokens equals that row generated alone with N.

        Raises:
            ValueError: a generation argument is out of range, or the prompt fills every text position.
        """
        rows = pixel_values if isinstance(pixel_values, torch.Tensor) else torch.cat(list(pixel_values))
        _check_row_limits(len(rows), max_new_tokens, num_beams, min_new_tokens)
        if not len(rows):
            return []
        prompt_ids, prompt_text = self._encode_prompt(prompt)
        limits = [self._cap_new_tokens(limit, len(prompt_ids)) for limit in max_new_tokens]
        # The same prompt for the whole batch, so no row needs padding.
        input_ids = torch.tensor([[self._bos_token_id, *prompt_ids]], device=self.device).repeat(len(rows), 1)
        generated = self.model.generate(
            pixel_values=rows.to(self.device, self.dtype, non_blocking=True),
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max(limits),
            min_new_tokens=None if min_new_tokens is None else min(min_new_tokens, min(limits)),
            num_beams=num_beams,
            do_sample=False,
        )
        # Without return_dict_in_generate, generate returns the token ids tensor itself.
        assert isinstance(generated, torch.Tensor)
        texts = self._decode_rows(generated, input_ids.shape[1], limits)
        captions = [_strip_prompt(text, prompt_text) for text in texts]
        # LitServe's guard: one output per input, or the caller would pair captions with the wrong jobs.
        if len(captions) != len(rows):
            raise CaptionerError(f"generate returned {len(captions)} captions for {len(rows)} images")
        return captions

    def _decode_rows(self, generated: torch.Tensor, kept: int, limits: Sequence[int]) -> list[str]:
        """Each row's text, cut after its own number of new tokens (the first ``kept`` are [CLS] and prompt)."""
        rows = generated.cpu().tolist()
        cut = [row[: kept + limit] for row, limit in zip(rows, limits, strict=True)]
        texts: list[str] = self.tokenizer.batch_decode(cut, skip_special_tokens=True)
        return texts

    def _cap_new_tokens(self, max_new_tokens: int, prompt_tokens: int) -> int:
        """``max_new_tokens``, lowered so [CLS], prompt and caption fit the checkpoint's text positions."""
        if prompt_tokens > self.max_prompt_tokens:
            raise PromptTooLongError(
                f"the prompt is {prompt_tokens} tokens; this model takes at most {self.max_prompt_tokens}"
            )
        return min(max_new_tokens, self._max_text_tokens - 1 - prompt_tokens)

    def count_tokens(self, text: str | None) -> int:
        """Tokens the model's tokenizer makes of ``text``, without [CLS]/[SEP] (0 for none): a job's ``usage``."""
        return len(self._encode_prompt(text)[0])

    def _encode_text(self, prompt: str | None) -> tuple[tuple[int, ...], str]:
        """Token ids of ``prompt`` without [CLS]/[SEP] (as HF's GIT VQA example), and its decoded text.

        Called through ``_encode_prompt``, its memo: the ids are a tuple, so no caller can change a shared answer.
        """
        text = (prompt or "").strip()
        if not text:
            return (), ""
        ids: list[int] = self.tokenizer(text, add_special_tokens=False).input_ids
        # Decoded rather than the raw prompt: the tokenizer lower-cases and drops [UNK] on the way back.
        return tuple(ids), self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def input_size_px(image_processor: Any) -> int:
    """The side the image processor resizes images to: its shortest edge, else its (crop) square's height.

    Raises:
        ModelLoadError: the processor declares no size.
    """
    for size, key in (
        (getattr(image_processor, "size", None), "shortest_edge"),
        (getattr(image_processor, "size", None), "height"),
        (getattr(image_processor, "crop_size", None), "height"),
    ):
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelLoadError("the checkpoint's image processor declares no input size")


def _resolve_source(path_or_hub_id: str | Path | None) -> tuple[str, str]:
    """Return what to pass to ``from_pretrained`` and the name users see."""
    path = EMBEDDED_MODEL_DIR if path_or_hub_id is None else Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return str(path), path.resolve().name
    if isinstance(path_or_hub_id, str) and _HUB_ID.match(path_or_hub_id) and not path.exists():
        return path_or_hub_id, path_or_hub_id
    raise ModelLoadError(f"model folder {str(path)!r} does not exist or is not a folder")


def _bos_token_id(model: GitForCausalLM, tokenizer: Any) -> int:
    """GIT's start token: the generation config's bos, else the tokenizer's [CLS], as microsoft/git-* use."""
    token_id = model.generation_config.bos_token_id
    if token_id is None:
        token_id = tokenizer.cls_token_id
    if not isinstance(token_id, int):
        raise ModelLoadError("checkpoint declares no bos token and its tokenizer has no [CLS]")
    return token_id


def _prompt_tokenizer_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre_tokenizer = getattr(backend, "pre_tokenizer", None)
    model_kind = type(getattr(backend, "model", None)).__name__
    if type(pre_tokenizer).__name__ == _WORDPIECE_PRE_TOKENIZER and model_kind == "WordPiece":
        return "bert-wordpiece"
    return "other"


def _strip_prompt(text: str, prompt_text: str) -> str:
    text = text.strip()
    if prompt_text and text.startswith(prompt_text):
        return text[len(prompt_text) :].strip()
    return text


def _check_generation_args(max_new_tokens: int, num_beams: int, min_new_tokens: int | None) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ValueError(f"num_beams must be at least 1, got {num_beams}")
    if min_new_tokens is not None and not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be within 0..max_new_tokens, got {min_new_tokens}")


def _check_row_limits(rows: int, max_new_tokens: Sequence[int], num_beams: int, min_new_tokens: int | None) -> None:
    if len(max_new_tokens) != rows:
        raise ValueError(f"{len(max_new_tokens)} token limits for {rows} images")
    for limit in max_new_tokens:
        _check_generation_args(limit, num_beams, min_new_tokens)
    if num_beams > 1 and len(set(max_new_tokens)) > 1:
        # Beam search is not prefix-consistent: a shorter limit changes which beam wins.
        raise ValueError("rows with different max_new_tokens need greedy decoding (num_beams=1)")
