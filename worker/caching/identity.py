"""What a cached caption is keyed by: the image's bytes, the model, every option that changes the output, the scope.

Two jobs share a key only when their captions must be equal: the same bytes (SHA-256 of what was
downloaded or uploaded), the same weights (the model's name and revision: a digest of its files or
the Hub commit, plus its dtype and device, which change the arithmetic), the same options (prompt,
``max_new_tokens``, ``min_new_tokens``, beams) and the same decode limits (which decide whether an
image fails). The scope is the API key unless ``cache_shared`` is on (docs/cache.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from shared.jobs.model import JobOptions
from shared.settings import Settings

#: Changes when the key's material or the entries' format change: old entries are then never read.
KEY_VERSION = "captionizer-cache/1"
#: The scope every key shares when ``cache_shared`` is on.
SHARED_SCOPE = "*"


@dataclass(frozen=True)
class CacheKey:
    """One cache key: the hex digest that names its entry and lease, and the scope it was made in."""

    digest: str
    scope: str


def model_identity(captioner: Any) -> str:
    """The model as the key sees it: name, revision (digest or commit), dtype and device type."""
    device = getattr(captioner.device, "type", str(captioner.device))
    return f"{captioner.name}@{captioner.revision}/{getattr(captioner, 'dtype', '')}/{device}"


def scope_of(owner: str, settings: Settings) -> str:
    """The owner's own scope by default; one scope for all with ``cache_shared``."""
    return SHARED_SCOPE if settings.cache_shared else "key:" + owner


def make_key(owner: str, image_sha256: str, options: JobOptions, *, model: str, settings: Settings) -> CacheKey:
    """The key of a job's caption (or of its image's input error)."""
    return _key(owner, image_sha256, options, model=model, settings=settings)


def make_url_key(owner: str, url: str, options: JobOptions, *, model: str, settings: Settings) -> CacheKey:
    """The key of a fresh URL's link to its entry: :func:`make_key`'s material with the URL in place of the bytes.

    The link (``worker.caching.store``) holds the digest of the key :func:`make_key` made from the image the
    URL served, with the same scope, model, options and limits, so it can only ever name that entry.
    The URL is hashed, never stored: a secret in its query string stays out of Redis.
    """
    return _key(owner, {"url": url}, options, model=model, settings=settings)


def _key(owner: str, image: str | dict[str, str], options: JobOptions, *, model: str, settings: Settings) -> CacheKey:
    scope = scope_of(owner, settings)
    material = [
        KEY_VERSION,
        scope,
        model,
        # A SHA-256 as a string, or a URL as {"url": ...}: the two can never encode alike.
        image,
        options.prompt,
        options.max_new_tokens,
        # The service sets no minimum length (the checkpoint's generation config, part of the revision,
        # does); named here so that a future option cannot be forgotten in the key.
        None,
        settings.num_beams,
        # An image too large under one limit may be captioned under another.
        [settings.max_image_pixels, settings.max_image_aspect_ratio],
    ]
    encoded = json.dumps(material, separators=(",", ":"), ensure_ascii=False).encode()
    return CacheKey(hashlib.sha256(encoded).hexdigest(), scope)
