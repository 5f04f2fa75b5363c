"""The ``captionizer`` command-line client: captions and alt text over the HTTP API (httpx and the stdlib only)."""

from cli.client import ApiError, CaptionizerClient

__all__ = ["ApiError", "CaptionizerClient"]
