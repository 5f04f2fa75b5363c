"""Batch records in Redis: a batch's hash, its items (created as jobs by the one create script), counts and results.

A batch is a hash: its options, ``total`` items, ``done`` items, a count per job
status (``n:<status>``) and its timings (epoch seconds). Its items are ordinary job
records (so ``/v1/jobs/{id}`` and the worker see jobs), whose ``batch_id`` lets
:meth:`shared.jobs.store.JobStore.transition` keep the counts current
(``shared/jobs/transition.lua``). As each results chunk's items all end, and when the batch
ends, their results are compacted into :class:`shared.batches.results.FinishedResults`
and the item records are deleted (``shared.batches.item_results``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from shared.batches.item_results import ItemResults
from shared.batches.model import Batch, BatchItemResult, parse_item_job_id
from shared.batches.results import FinishedResults, RedisFinishedResults
from shared.errors import BatchClosed, BatchNotFound
from shared.jobs.model import Job, JobStatus
from shared.jobs.shares import OwnerShares
from shared.jobs.store import JobStore, map_redis_errors
from shared.keys import Keys

# KEYS[1] the batch hash, KEYS[2] the ended-batches list; ARGV[1] the batch id.
# Closing a batch to new items: if every item it holds has already ended, it ends now.
# Returns 0 when the batch is missing, 1 when closed with items still to end, 2 when it ended.
_CLOSE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HDEL', KEYS[1], 'open') == 0 then return 1 end
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if done < total then return 1 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'finished_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('RPUSH', KEYS[2], ARGV[1])
return 2
"""

# How QueueUnavailable names this store.
_WHAT = "the batch store (Redis)"

# KEYS[1] the batch hash; ARGV[1] items to add. Counts them as queued already (their jobs are created
# next, by create.lua). Returns the first new index, -1 when the batch is missing and -2 when it is
# closed to new items.
_ALLOCATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'open') == 0 then return -2 end
redis.call('HINCRBY', KEYS[1], 'n:queued', tonumber(ARGV[1]))
return redis.call('HINCRBY', KEYS[1], 'total', tonumber(ARGV[1])) - tonumber(ARGV[1])
"""
# KEYS[1] the batch hash; ARGV[1] the first index allocated, ARGV[2] how many. Gives an allocation
# whose items were never created back, if no later allocation follows it. Returns 1 when given back,
# 0 when another allocation came after it (the caller then creates its items failed, so none is missing).
_RELEASE_LUA = """
if tonumber(redis.call('HGET', KEYS[1], 'total') or '-1') ~= tonumber(ARGV[1]) + tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'n:queued', -tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'total', -tonumber(ARGV[2]))
return 1
"""


def _epoch(value: datetime) -> str:
    return f"{value.timestamp():.6f}"


def _when(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


class BatchStore:
    """Reads and writes batches and their items' records; item statuses still change only in JobStore."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int, results: FinishedResults | None = None) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self.results: FinishedResults = results or RedisFinishedResults(redis, keys)
        self.item_results = ItemResults(redis, keys, self.results, self.get)
        self.jobs = JobStore(redis, keys, ttl_s)
        self._allocate = redis.register_script(_ALLOCATE_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._close = redis.register_script(_CLOSE_LUA)

    async def create(
        self,
        batch: Batch,
        items: Sequence[Job],
        uploads: Mapping[str, bytes],
        upload_ttl_s: int,
        shares: OwnerShares | None = None,
    ) -> None:
        """Store the batch, then its first items (queued) through the one create script; all or nothing.

        Raises:
            OwnerQuotaExceeded, QueueFull, TooManyItemsInFlight: a quota of the key is full; nothing is stored.
            QueueUnavailable: Redis cannot be reached.
        """
        fields: dict[str, Any] = {
            "owner": batch.owner,
            "total": batch.total,
            "done": 0,
            "prompt": json.dumps(batch.prompt),
            "max_new_tokens": batch.max_new_tokens,
            "webhook_url": json.dumps(batch.webhook_url),
            "webhook_item_events": int(batch.webhook_item_events),
            "created_at": _epoch(batch.created_at),
            "expires_at": _epoch(batch.expires_at),
            "inflight_key": self.keys.items_in_flight(batch.owner),
            f"n:{JobStatus.QUEUED}": len(items),
        }
        if batch.is_open:
            fields["open"] = 1
        key = self.keys.batch(batch.id)
        with map_redis_errors(_WHAT):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.ttl_s)
                await pipe.execute()
        try:
            await self.jobs.create_many(items, uploads, upload_ttl_s=upload_ttl_s, shares=shares, is_batch=True)
        except Exception:
            # Nobody knows the batch's id yet: refused, it leaves nothing behind.
            with map_redis_errors(_WHAT):
                await self.redis.delete(key)
            raise

    async def allocate(self, batch_id: str, count: int) -> int:
        """Reserve ``count`` indexes at the end of an open batch; returns the first.

        Raises:
            BatchNotFound: the batch is gone.
            BatchClosed: the batch takes no more items.
        """
        with map_redis_errors(_WHAT):
            first = int(await self._allocate(keys=[self.keys.batch(batch_id)], args=[count]))
        if first == -1:
            raise BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
        if first == -2:
            raise BatchClosed("this batch takes no more items", batch_id=batch_id)
        return first

    async def add_items(
        self, items: Sequence[Job], uploads: Mapping[str, bytes], upload_ttl_s: int, shares: OwnerShares
    ) -> None:
        """Store items whose indexes :meth:`allocate` reserved (refused: see :meth:`release`).

        Raises:
            OwnerQuotaExceeded, QueueFull, TooManyItemsInFlight: a quota of the key is full; nothing was stored.
            QueueUnavailable: Redis cannot be reached.
        """
        await self.jobs.create_many(items, uploads, upload_ttl_s=upload_ttl_s, shares=shares, is_batch=True)

    async def release(self, batch_id: str, first: int, count: int) -> bool:
        """Give back indexes whose items were refused; False when a later allocation follows them.

        Then the caller stores them anyway (:meth:`add_placeholders`) and fails them, so the batch's
        count of items still ends.
        """
        with map_redis_errors(_WHAT):
            return bool(await self._release(keys=[self.keys.batch(batch_id)], args=[first, count]))

    async def add_placeholders(self, items: Sequence[Job]) -> None:
        """Store refused items without their images, counted in flight (uncapped), for the caller to fail."""
        uncapped = OwnerShares(max_items_in_flight=2**53)
        await self.jobs.create_many(items, {}, upload_ttl_s=1, shares=uncapped, is_batch=True)

    async def close(self, batch_id: str) -> bool:
        """Take no more items; True when that ended the batch (every item had already ended)."""
        with map_redis_errors(_WHAT):
            outcome = await self._close(keys=[self.keys.batch(batch_id), self.keys.batches_ended()], args=[batch_id])
        return int(outcome) == 2

    async def mark_canceled(self, batch_id: str, at: datetime) -> None:
        """Record the cancel (the first one stands); the items themselves are canceled through JobStore."""
        with map_redis_errors(_WHAT):
            await self.redis.hsetnx(self.keys.batch(batch_id), "canceled_at", _epoch(at))  # type: ignore[misc]

    async def get(self, batch_id: str) -> Batch | None:
        """The batch, or None when it does not exist (or has expired)."""
        with map_redis_errors(_WHAT):
            raw = await self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[misc]
        return _decode_batch(batch_id, raw) if raw else None

    async def read_results(self, batch: Batch, start: int, limit: int) -> list[BatchItemResult]:
        """Items ``start`` to ``start + limit`` (fewer at the end), compacted or live (``shared.batches.item_results``)."""
        return await self.item_results.read(batch, start, limit)

    async def compact_chunk(self, batch: Batch, chunk: int) -> bool:
        """Compact one results chunk whose items have all ended; True when this call did it."""
        return await self.item_results.compact_chunk(batch, chunk)

    async def compact(self, batch: Batch) -> None:
        """Compact an ended batch's remaining results and drop its item records (idempotent)."""
        await self.item_results.compact(batch)

    async def read_item_job(self, job_id: str) -> Job | None:
        """An item's job rebuilt from its batch's compacted results, or None (not an item, not compacted, or gone)."""
        parsed = parse_item_job_id(job_id)
        if parsed is None:
            return None
        return await self.item_results.read_item_job(await self.get(parsed[0]), job_id)


def _decode_batch(batch_id: str, raw: Mapping[bytes, bytes]) -> Batch:
    data = {name.decode(): value.decode() for name, value in raw.items()}
    counts = {JobStatus(name[2:]): int(value) for name, value in data.items() if name.startswith("n:")}
    return Batch(
        id=batch_id,
        owner=data["owner"],
        total=int(data["total"]),
        is_open="open" in data,
        counts=counts,
        done=int(data.get("done", 0)),
        prompt=json.loads(data.get("prompt", "null")),
        max_new_tokens=int(data["max_new_tokens"]),
        webhook_url=json.loads(data.get("webhook_url", "null")),
        webhook_item_events=data.get("webhook_item_events") == "1",
        created_at=datetime.fromtimestamp(float(data["created_at"]), UTC),
        started_at=_when(data.get("started_at")),
        finished_at=_when(data.get("finished_at")),
        canceled_at=_when(data.get("canceled_at")),
        expires_at=datetime.fromtimestamp(float(data["expires_at"]), UTC),
        is_compacted="compacted" in data,
        compacted_chunks=frozenset(int(name[2:]) for name in data if name.startswith("k:")),
    )
