"""Fair shares of batches: one key may have only a few distinct prompts waiting for the model at once.

The batcher groups images by prompt (``worker.captioning.batching``), so a key that gives every job its own prompt
would turn each of its jobs into a batch of one, and take the model's time from everyone. Here a job
whose key already has ``max_prompts_per_key`` other prompts in flight waits (within its time limit)
until one of them drains; jobs sharing a prompt already in flight, and other keys' jobs, never wait.
Different ``max_new_tokens`` never split a group (greedy decoding merges them), so they need no bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator


class PromptShares:
    """Counts each key's images in flight per prompt and bounds how many distinct prompts a key has."""

    def __init__(self, max_prompts_per_key: int) -> None:
        if max_prompts_per_key < 1:
            raise ValueError("max_prompts_per_key must be at least 1")
        self.max_prompts_per_key = max_prompts_per_key
        self._held: dict[str, Counter[str | None]] = {}
        self._changed = asyncio.Condition()

    def prompts_of(self, owner: str) -> set[str | None]:
        """The prompts ``owner`` has in flight now."""
        return set(self._held.get(owner, ()))

    @contextlib.asynccontextmanager
    async def hold(self, owner: str, prompt: str | None) -> AsyncIterator[None]:
        """Wait for room for ``prompt`` among ``owner``'s prompts, and hold it while the block runs."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._fits(owner, prompt))
            self._held.setdefault(owner, Counter())[prompt] += 1
        try:
            yield
        finally:
            async with self._changed:
                held = self._held[owner]
                held[prompt] -= 1
                if not held[prompt]:
                    del held[prompt]
                if not held:
                    del self._held[owner]
                self._changed.notify_all()

    def _fits(self, owner: str, prompt: str | None) -> bool:
        held = self._held.get(owner)
        return held is None or prompt in held or len(held) < self.max_prompts_per_key
