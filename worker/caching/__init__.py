"""The caption cache: content-addressed results and in-flight de-duplication (docs/cache.md)."""

from worker.caching.cache import CaptionCache, Claim
from worker.caching.store import CacheStore

__all__ = ["CacheStore", "CaptionCache", "Claim"]
