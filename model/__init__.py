"""Captionizer's model layer: a GIT captioner that takes plain arguments and PIL images.

``Captioner`` and friends are imported on first use, so that light modules such as
``model.images`` (used by the webhook worker's intake path) don't pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.captioner import EMBEDDED_MODEL_DIR, Captioner
    from model.errors import CaptionerError, ModelLoadError

__all__ = ["EMBEDDED_MODEL_DIR", "Captioner", "CaptionerError", "ModelLoadError"]


def __getattr__(name: str) -> Any:
    # PEP 562: resolve the heavy exports lazily.
    if name in ("CaptionerError", "ModelLoadError"):
        from model import errors

        return getattr(errors, name)
    if name in __all__:
        from model import captioner

        return getattr(captioner, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
