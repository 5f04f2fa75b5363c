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
        # One semaphore per key with fetches held or waiting: a release wakes one waiter of that key only,
        # in arrival order, and a fetch within its share neither takes a lock nor yields.
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._users: Counter[str] = Counter()

    def fetches_of(self, owner: str) -> int:
        """How many downloads ``owner`` has in progress now."""
        return self._held[owner]

    @contextlib.asynccontextmanager
    async def hold(self, owner: str) -> AsyncIterator[None]:
        """Wait for room among ``owner``'s downloads, and hold one while the block runs (the download)."""
        slots = self._slots_of(owner)
        self._users[owner] += 1
        try:
            if slots is not None:
                await slots.acquire()
            self._held[owner] += 1
            try:
                yield
            finally:
                self._held[owner] -= 1
                if not self._held[owner]:
                    del self._held[owner]
                if slots is not None:
                    slots.release()
        finally:
            self._users[owner] -= 1
            if not self._users[owner]:
                del self._users[owner]
                self._slots.pop(owner, None)

    def _slots_of(self, owner: str) -> asyncio.Semaphore | None:
        if not self.max_fetches_per_key:
            return None
        slots = self._slots.get(owner)
        if slots is None:
            slots = self._slots[owner] = asyncio.Semaphore(self.max_fetches_per_key)
        return slots
