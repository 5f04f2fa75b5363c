"""Closing ended batches and compacting ended results chunks, in the API process.

The item that ends a batch pushes its id on a list, and the item that ends a results
chunk pushes ``<batch_id>:<chunk>`` on another (``shared/jobs/transition.lua``). One API process
takes each entry with ``LMOVE`` onto a working list and removes it only when done, so an
API killed mid-way leaves it to be done again at the next start (twice is harmless:
compaction is idempotent and the webhook's id is derived from the batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime

from redis.asyncio import Redis

from shared.background import BackgroundTask
from shared.batches.model import Batch, BatchPublic
from shared.batches.store import BatchStore
from shared.jobs.model import utc_now
from shared.jobs.store import REDIS_ERRORS
from shared.keys import Keys
from shared.webhooks.delivery import SendTask, WebhookDelivery, build_event, enqueue_delivery

logger = logging.getLogger(__name__)

# Seconds between looks at an empty list: a batch's webhook waits at most this long. A plain
# LMOVE and a sleep, not BLMOVE: a blocking command would hold one connection per API process.
_POLL_S = 0.5
# After Redis errors, wait this long before trying again (the API serves 503s meanwhile).
_RETRY_AFTER_ERROR_S = 1.0


def batch_delivery(batch: Batch, now: datetime) -> WebhookDelivery:
    """The batch's own event (``batch.completed`` or ``batch.canceled``), built by the one builder, signed as its owner."""
    if batch.webhook_url is None:
        raise ValueError(f"batch {batch.id} has no webhook_url")
    data = BatchPublic.from_batch(batch).model_dump(mode="json")
    return build_event(
        subject_id=batch.id, owner=batch.owner, url=batch.webhook_url, event=f"batch.{batch.state}", data=data, now=now
    )


class BatchCloser:
    """Takes ended results chunks and ended batches off their Redis lists, one at a time, while the app runs."""

    def __init__(self, redis: Redis, keys: Keys, batches: BatchStore, send_task: SendTask) -> None:
        self.redis = redis
        self.keys = keys
        self.batches = batches
        self.send_task = send_task
        self._loop = BackgroundTask("batch-closer", self._run)
        self._stopping = asyncio.Event()

    def start(self) -> None:
        """Start closing batches in the background."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop; a batch being closed stays on the closing list for the next start."""
        if not self._loop.started:
            return
        # The flag as well as the cancel: redis-py turns a cancel that lands mid-command into a
        # connection error, which the loop would take for Redis being down and carry on.
        self._stopping.set()
        await self._loop.stop()

    async def _run(self) -> None:
        await self._recover()
        while not self._stopping.is_set():
            try:
                compacted = await self.compact_next()
                if await self.close_next() is None and compacted is None:
                    await self._pause(_POLL_S)
            except REDIS_ERRORS:
                if not self._stopping.is_set():
                    logger.warning("batch closer cannot reach Redis; retrying")
                await self._pause(_RETRY_AFTER_ERROR_S)
            except Exception:
                # One bad batch must not stop the loop for the others.
                logger.exception("closing a batch failed")
                await self._pause(_RETRY_AFTER_ERROR_S)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when stop() is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _recover(self) -> None:
        # What an earlier API process was doing when it stopped goes back on its list.
        pairs = [
            (self.keys.batches_closing(), self.keys.batches_ended()),
            (self.keys.result_chunks_compacting(), self.keys.result_chunks_ended()),
        ]
        with contextlib.suppress(*REDIS_ERRORS):
            for working, waiting in pairs:
                while await self.redis.lmove(working, waiting, "RIGHT", "LEFT"):
                    pass

    async def compact_next(self) -> str | None:
        """Compact the next results chunk whose items have all ended, if there is one; its entry, or None."""
        raw = await self.redis.lmove(
            self.keys.result_chunks_ended(), self.keys.result_chunks_compacting(), "LEFT", "RIGHT"
        )
        if raw is None:
            return None
        entry = raw.decode() if isinstance(raw, bytes) else str(raw)
        batch_id, _, chunk = entry.rpartition(":")
        batch = await self.batches.get(batch_id) if chunk.isdigit() else None
        if batch is not None:
            await self.batches.compact_chunk(batch, int(chunk))
        await self.redis.lrem(self.keys.result_chunks_compacting(), 1, raw)  # type: ignore[misc]
        return entry

    async def close_next(self) -> str | None:
        """Close the next ended batch, if there is one; its id, or None."""
        raw = await self.redis.lmove(self.keys.batches_ended(), self.keys.batches_closing(), "LEFT", "RIGHT")
        if raw is None:
            return None
        batch_id = raw.decode() if isinstance(raw, bytes) else str(raw)
        await self.close(batch_id)
        await self.redis.lrem(self.keys.batches_closing(), 1, raw)  # type: ignore[misc]
        return batch_id

    async def close(self, batch_id: str) -> None:
        """Compact the batch's results and queue its webhook, if it asked for one."""
        batch = await self.batches.get(batch_id)
        if batch is None:
            return
        await self.batches.compact(batch)
        logger.info("batch ended", extra={"batch_id": batch.id, "items": batch.total, "status": str(batch.state)})
        if batch.webhook_url is not None:
            delivery = batch_delivery(batch, utc_now())
            await asyncio.to_thread(enqueue_delivery, self.send_task, self.keys, delivery)
            logger.info("webhook queued", extra={"batch_id": batch.id, "webhook_event": delivery.event})
