"""Chunk messages of a batch: each listed job runs as its own delivery, with bulk work in hand bounded.

One broker message (``CAPTION_CHUNK_TASK``) names a chunk of a batch's jobs and is acknowledged
late, after every job in it has ended. Each job goes through :meth:`JobRunner.run_seen`, the
single-job path, so a job already final is skipped: a chunk redelivered after its worker was
killed redoes only the jobs not yet recorded, and its jobs found ``running`` are suspects that run
alone (``worker.recovery.redelivery``), so a poison item is isolated per item.

Chunks wait here, holding only their message, until the bulk images in hand fall below
``max_items_in_hand``. That keeps memory and the batcher's backlog bounded whatever the prefetch,
and lets an interactive job, taken from the caption queue as soon as a pool thread is free
(``queue_order_strategy="priority"``), find at most that backlog ahead of it, which its priority in
the batcher skips anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from shared.jobs.model import JobStatus
from worker.captioning.pipeline import JobRunner

logger = logging.getLogger(__name__)


class ItemsInHand:
    """Counts bulk images in hand; a chunk enters when they are below the limit (or when none are)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit of bulk images in hand must be at least 1")
        self.limit = limit
        self.count = 0
        self._changed = asyncio.Condition()

    async def enter(self, items: int) -> None:
        """Wait until there is room, then count ``items`` in (a chunk larger than the limit enters alone)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.count == 0 or self.count + items <= self.limit)
            self.count += items

    async def leave(self, items: int) -> None:
        """Count ``items`` out and wake waiting chunks."""
        async with self._changed:
            self.count -= items
            self._changed.notify_all()


class ChunkRunner:
    """Runs chunks of job ids through the single-job path, a bounded number of images at a time."""

    def __init__(self, runner: JobRunner, *, max_items_in_hand: int) -> None:
        self.runner = runner
        self.in_hand = ItemsInHand(max_items_in_hand)

    async def run(self, job_ids: Sequence[str]) -> list[JobStatus | None]:
        """Run every job of one chunk; returns each one's final status written by this delivery (None: none).

        Raises:
            QueueUnavailable: Redis went away; the chunk goes back to the queue, its ended jobs stay ended.
            NotAdmittedError: a suspect job found no turn alone in time; the chunk is redelivered.
        """
        ids = list(dict.fromkeys(job_ids))  # a listed id twice would run twice in parallel
        await self.in_hand.enter(len(ids))
        try:
            seen = await self.runner.store.get_many(ids)
            outcomes = await asyncio.gather(
                *(self.runner.run_seen(job_id, seen.get(job_id), interactive=False) for job_id in ids),
                return_exceptions=True,
            )
        finally:
            await self.in_hand.leave(len(ids))
        return _statuses_or_raise(outcomes)


def _statuses_or_raise(outcomes: list[JobStatus | BaseException | None]) -> list[JobStatus | None]:
    """The statuses, once every job had its turn; else the first error (QueueUnavailable, NotAdmittedError)."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
