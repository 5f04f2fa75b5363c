"""Reading a GIT checkpoint onto a device: which device and dtype, and the checks that it is a GIT captioner."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoProcessor, GitForCausalLM

from model.errors import ModelLoadError

_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_DIGEST_CHUNK_BYTES = 1024 * 1024


def resolve_device(device: str) -> torch.device:
    """Pick the device for ``"auto"`` (CUDA, else Apple MPS, else CPU) or parse an explicit one."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """Pick the weights' dtype: for ``"auto"`` float16 on CUDA (half the memory, tensor cores), else float32."""
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_checkpoint(
    source: str, device: torch.device, dtype: torch.dtype, *, local_files_only: bool
) -> tuple[GitForCausalLM, Any]:
    """The model and processor in ``source``, in eval mode on ``device``.

    Raises:
        ModelLoadError: the checkpoint is missing, broken, not GIT, or cannot be placed on ``device``.
    """
    try:
        processor = AutoProcessor.from_pretrained(source, local_files_only=local_files_only)  # type: ignore[no-untyped-call]
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_files_only, dtype=dtype)
    # transformers signals a broken checkpoint with OSError, ValueError, KeyError, safetensors'
    # SafetensorError or RuntimeError (shape mismatch) depending on which file is wrong; all mean the same here.
    except Exception as exc:
        raise ModelLoadError(f"cannot load model from {source!r}: {exc}") from exc
    if not isinstance(model, GitForCausalLM):
        raise ModelLoadError(f"{source!r} holds a {model.config.model_type!r} model, not a GIT captioner")
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(f"{source!r} has no tokenizer or image processor")
    try:
        model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to() types its args oddly
    except (RuntimeError, AssertionError) as exc:  # torch asserts when CUDA is absent from the build
        raise ModelLoadError(f"cannot place model from {source!r} on {device}: {exc}") from exc
    model.train(False)  # eval mode: no dropout
    return model, processor


def checkpoint_revision(source: str, model: GitForCausalLM) -> str:
    """What identifies the weights ``source`` holds: a folder's file digest, or the Hub commit it was read at.

    A folder is digested whole (weights, configs, tokenizer, processor), file by file in name order, so any
    file that can change a caption changes the revision; ``sha256:`` and the hex digest. A Hub id reads
    the commit transformers resolved (``hub:`` and the commit), else ``unknown``.
    """
    path = Path(source)
    if not path.is_dir():
        commit = getattr(model.config, "_commit_hash", None)
        return f"hub:{commit}" if commit else "unknown"
    digest = hashlib.sha256()
    for file in sorted(item for item in path.rglob("*") if item.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\x00")
        with file.open("rb") as stream:
            while chunk := stream.read(_DIGEST_CHUNK_BYTES):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
