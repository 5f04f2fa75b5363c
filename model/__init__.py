"""Captionizer's model layer: a GIT captioner that takes plain arguments and PIL images."""

from model.captioner import EMBEDDED_MODEL_DIR, Captioner, CaptionerError, ModelLoadError

__all__ = ["EMBEDDED_MODEL_DIR", "Captioner", "CaptionerError", "ModelLoadError"]
