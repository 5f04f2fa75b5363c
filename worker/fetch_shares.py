"""Fair shares of image fetches: one key may have only a few downloads in progress at once in a worker.

A worker's fetches are fenced per host (``worker.egress``: 8 connections each), but a key whose images
sit on many slow hosts, or on one slow host that others use too, could still hold every connection
and every fetching job of the worker, and delay everyone else's downloads. Here a job whose key already
has ``max_fetches_per_key`` downloads in progress waits (within its time limit) until one of them ends;
other keys' fetches never wait for it. The wait happens before the download, so it never eats into the
download's own ``fetch_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator


class FetchShares:
    """Counts each key's downloads in progress and bounds them at ``max_fetches_per_key`` (0: unbounded)."""

    def __init__(self, max_fetches_per_key: int) -> None:
        if max_fetches_per_key < 0:
            raise ValueError("max_fetches_per_key must be 0 (no limit) or more")
        self.max_fetches_per_key = max_fetches_per_key
        self._held: Counter[str] = Counter()
        self._waiting = 0
        self._changed = asyncio.Condition()

    def fetches_of(self, owner: str) -> int:
        """How many downloads ``owner`` has in progress now."""
        return self._held[owner]

    @contextlib.asynccontextmanager
    async def hold(self, owner: str) -> AsyncIterator[None]:
        """Wait for room among ``owner``'s downloads, and hold one while the block runs (the download)."""
        # Within its share a fetch takes no lock and never yields: one loop thread counts, so this is atomic.
        if not self._fits(owner):
            async with self._changed:
                self._waiting += 1
                try:
                    await self._changed.wait_for(lambda: self._fits(owner))
                finally:
                    self._waiting -= 1
        self._held[owner] += 1
        try:
            yield
        finally:
            self._held[owner] -= 1
            if not self._held[owner]:
                del self._held[owner]
            if self._waiting:
                # Shielded: a fetch canceled (or timed out) here must still wake the next one.
                await asyncio.shield(self._wake_waiters())

    async def _wake_waiters(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _fits(self, owner: str) -> bool:
        return not self.max_fetches_per_key or self._held[owner] < self.max_fetches_per_key
