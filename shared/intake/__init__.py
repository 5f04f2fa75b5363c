"""Checks of what comes in that need no network and no image library: URLs, uploads, the model's published limits."""
