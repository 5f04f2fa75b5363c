"""The errors the model layer raises; light to import (no torch), so the worker can catch them anywhere."""

from __future__ import annotations


class CaptionerError(Exception):
    """Base class of the errors the model layer raises."""


class ModelLoadError(CaptionerError):
    """A checkpoint is missing, malformed, not a GIT model, or cannot be placed on the device."""


class PromptTooLongError(CaptionerError, ValueError):
    """The prompt takes more tokens than the checkpoint's text positions leave room for (the caller's mistake)."""
