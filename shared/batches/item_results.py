"""A batch's item results wherever they are: on live job records, or compacted chunk by chunk as items end.

Items are grouped in results chunks of ``RESULTS_CHUNK_ITEMS`` consecutive indexes. The
transition script counts each chunk's ended items and lists the chunk when its last item
ends (``shared/jobs/transition.lua``); the API then compacts it (:meth:`ItemResults.compact_chunk`):
its rows go to :class:`FinishedResults`, the batch hash notes ``k:<chunk>``, and the item
records go. A running batch so keeps full job records only for chunks with an item still to
end; its last chunk, usually partial, is compacted when the batch ends (:meth:`ItemResults.compact`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis

from shared.batches.model import Batch, BatchItemResult, item_job_id, parse_item_job_id
from shared.batches.results import RESULTS_CHUNK_ITEMS, FinishedResults, chunk_of
from shared.jobs.model import Job, JobStatus
from shared.jobs.store import map_redis_errors
from shared.keys import Keys

# How QueueUnavailable names this store.
_WHAT = "the batch store (Redis)"
# The job fields a result shows, read with one HMGET per item.
_RESULT_FIELDS = ("status", "caption", "error", "ref", "usage")
# KEYS[1] the batch hash; ARGV[1] a field. Sets it to 1 only on a batch that still exists, so a
# batch expiring mid-compaction is not brought back as a hash with no owner and no TTL.
_MARK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSET', KEYS[1], ARGV[1], '1')
"""

#: Reads a batch again (``BatchStore.get``), when compaction may have moved its results meanwhile.
RereadFn = Callable[[str], Awaitable[Batch | None]]


class ItemResults:
    """Reads a batch's results a range at a time, and compacts them one results chunk at a time."""

    def __init__(self, redis: Redis, keys: Keys, finished: FinishedResults, reread: RereadFn) -> None:
        self.redis = redis
        self.keys = keys
        self.finished = finished
        self.reread = reread
        self._mark = redis.register_script(_MARK_LUA)

    async def read(self, batch: Batch, start: int, limit: int) -> list[BatchItemResult]:
        """Items ``start`` to ``start + limit`` (fewer at the end): compacted chunks from the store, the rest live."""
        stop = min(batch.total, start + limit)
        if start >= stop:
            return []
        chunks = range(chunk_of(start), chunk_of(stop - 1) + 1)
        live_indexes = [index for index in range(start, stop) if not batch.is_chunk_compacted(chunk_of(index))]
        with map_redis_errors(_WHAT):
            stored = await self.finished.load_chunks(batch.id, [c for c in chunks if batch.is_chunk_compacted(c)])
        live = await self._read_live(batch.id, live_indexes)
        if any(row is None for row in live):
            # Compacted since ``batch`` was read (its records are gone): read the compacted copy.
            current = await self.reread(batch.id)
            if current is not None and _compacted(current, chunks) != _compacted(batch, chunks):
                return await self.read(current, start, limit)
        rows = {row.index: row for found in stored.values() for row in found if start <= row.index < stop}
        rows.update((index, row) for index, row in zip(live_indexes, live, strict=True) if row is not None)
        return [rows.get(index) or _queued_row(batch.id, index) for index in range(start, stop)]

    async def compact_chunk(self, batch: Batch, chunk: int) -> bool:
        """Move one results chunk to the finished store, note it on the batch, drop its item records.

        Idempotent, and safe against another API process compacting the same chunk: a chunk
        whose records are gone because it was compacted meanwhile is left alone. Returns
        True when this call compacted it.
        """
        if batch.is_chunk_compacted(chunk):
            return False
        first = chunk * RESULTS_CHUNK_ITEMS
        indexes = range(first, min(batch.total, first + RESULTS_CHUNK_ITEMS))
        live = await self._read_live(batch.id, indexes)
        if any(row is None for row in live):
            current = await self.reread(batch.id)
            if current is None or current.is_chunk_compacted(chunk):
                return False
        rows = [row or _queued_row(batch.id, index) for index, row in zip(indexes, live, strict=True)]
        ttl_s = max(1, int(batch.expires_at.timestamp() - datetime.now(UTC).timestamp()))
        ids = [item_job_id(batch.id, index) for index in indexes]
        with map_redis_errors(_WHAT):
            await self.finished.save_chunk(batch.id, chunk, rows, ttl_s)
            # Noted only once saved, and the records dropped only once noted: a reader always finds one copy.
            await self._mark(keys=[self.keys.batch(batch.id)], args=[f"k:{chunk}"])
            if ids:
                await self.redis.delete(*(self.keys.job(i) for i in ids), *(self.keys.upload(i) for i in ids))
        return True

    async def compact(self, batch: Batch) -> None:
        """Compact every chunk not compacted yet (an ended batch), then note the whole batch as compacted."""
        if batch.is_compacted:
            return
        for chunk in range(chunk_of(batch.total - 1) + 1):
            await self.compact_chunk(batch, chunk)
        with map_redis_errors(_WHAT):
            await self._mark(keys=[self.keys.batch(batch.id)], args=["compacted"])

    async def read_item_job(self, batch: Batch | None, job_id: str) -> Job | None:
        """An item's job rebuilt from its batch's compacted results, or None (not an item, not compacted, or gone)."""
        parsed = parse_item_job_id(job_id)
        if parsed is None or batch is None or parsed[0] != batch.id:
            return None
        index = parsed[1]
        if index >= batch.total or not batch.is_chunk_compacted(chunk_of(index)):
            return None
        rows = await self.read(batch, index, 1)
        if not rows:
            return None
        row = rows[0]
        return Job(
            id=job_id,
            owner=batch.owner,
            status=row.status,
            source="url",
            prompt=batch.prompt,
            max_new_tokens=batch.max_new_tokens,
            created_at=batch.created_at,
            finished_at=batch.finished_at,
            caption=row.caption,
            usage=row.usage,
            error=row.error,
            batch_id=batch.id,
            ref=row.ref,
        )

    async def _read_live(self, batch_id: str, indexes: Sequence[int]) -> list[BatchItemResult | None]:
        if not indexes:
            return []
        with map_redis_errors(_WHAT):
            async with self.redis.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.hmget(self.keys.job(item_job_id(batch_id, index)), list(_RESULT_FIELDS))
                raws = await pipe.execute()
        return [_live_row(batch_id, index, raw) for index, raw in zip(indexes, raws, strict=True)]


def _compacted(batch: Batch, chunks: range) -> list[bool]:
    return [batch.is_chunk_compacted(chunk) for chunk in chunks]


def _live_row(batch_id: str, index: int, raw: Sequence[bytes | None]) -> BatchItemResult | None:
    status, caption, error, ref, usage = (json.loads(value) if value is not None else None for value in raw)
    if status is None:
        return None
    return BatchItemResult.of_item(batch_id, index, status, caption, ref, error, usage)


def _queued_row(batch_id: str, index: int) -> BatchItemResult:
    # A record not written yet (an append in progress) reads as queued.
    return BatchItemResult.of_item(batch_id, index, JobStatus.QUEUED, None, None, None, None)
