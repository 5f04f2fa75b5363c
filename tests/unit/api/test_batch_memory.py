"""Redis bytes per batch item, measured with MEMORY USAGE on a real redis-server: live job records vs compacted,
after the batch ends and while it still runs (its ended results chunks compacted as they end).

Run with ``-s`` to see the figures docs/batches.md quotes.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from redis.asyncio import Redis

from api.batches.closer import BatchCloser
from shared.batches.model import Batch, BatchState, item_job_id, new_batch_id
from shared.batches.results import RESULTS_CHUNK_ITEMS
from shared.batches.store import BatchStore
from shared.jobs.model import Job, JobStatus, JobTimings, utc_now
from shared.jobs.store import JobStore
from shared.keys import Keys

ITEMS = 1_000
KEYS = Keys("memtest")
#: Ceiling on a compacted item (docs/batches.md quotes the measured figure).
MAX_COMPACT_BYTES_PER_ITEM = 120
#: Ceiling on an ended item of a running batch, 7.5 of its 10 results chunks ended: the half chunk still
#: running keeps its ended items' full records, about 1.7 KB each, which amortises to ~120 B over 7.5 chunks.
MAX_RUNNING_BYTES_PER_ENDED_ITEM = 250
# Captions drawn from a vocabulary, so compression sees text as varied as real captions.
_WORDS = [
    "a",
    "an",
    "the",
    "man",
    "woman",
    "dog",
    "cat",
    "red",
    "blue",
    "green",
    "small",
    "large",
    "old",
    "young",
    "sitting",
    "standing",
    "on",
    "in",
    "next",
    "to",
    "with",
    "table",
    "chair",
    "street",
    "car",
    "bicycle",
    "tree",
    "grass",
    "beach",
    "water",
    "sign",
    "building",
    "window",
    "holding",
    "wearing",
    "white",
    "black",
    "wooden",
    "plate",
    "of",
    "food",
    "two",
    "three",
    "people",
    "group",
    "playing",
    "field",
]


def _caption(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 14)))


async def _memory(redis: Redis, keys: list[str]) -> int:
    total = 0
    for key in keys:
        total += int(await redis.memory_usage(key, samples=0) or 0)
    return total


async def _new_batch(redis: Redis, total: int) -> tuple[Batch, list[Job]]:
    now = utc_now()
    batch = Batch(
        id=new_batch_id(),
        owner="key_0123456789abcdef",
        total=total,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    items = [
        Job(
            id=item_job_id(batch.id, i),
            owner=batch.owner,
            image_url=f"https://images.example.com/catalogue/2024/product-{i:06d}.jpg",
            batch_id=batch.id,
            ref=f"product-{i:06d}.jpg",
        )
        for i in range(total)
    ]
    await BatchStore(redis, KEYS, ttl_s=3600).create(batch, items, {}, upload_ttl_s=60)
    return batch, items


async def _finish(jobs: JobStore, job: Job, rng: random.Random) -> None:
    """What a worker writes on the way (timings, model, stage), as in production."""
    assert await jobs.transition(job.id, JobStatus.RUNNING, started_at=utc_now(), stage="captioning")
    timings = JobTimings(queue_wait_s=1.2, fetch_s=0.05, batch_wait_s=0.01, generate_s=0.2, total_s=1.5, batch_size=32)
    assert await jobs.transition(
        job.id, JobStatus.SUCCEEDED, caption=_caption(rng), finished_at=utc_now(), model="embedded", timings=timings
    )


async def _result_keys(redis: Redis, batch: Batch) -> list[str]:
    return [key.decode() async for key in redis.scan_iter(match=KEYS.batch_results(batch.id, 0)[:-1] + "*")]


async def _run_batch(redis: Redis) -> tuple[float, float]:
    batches = BatchStore(redis, KEYS, ttl_s=3600)
    jobs = JobStore(redis, KEYS, ttl_s=3600)
    batch, items = await _new_batch(redis, ITEMS)
    rng = random.Random(5)
    for job in items:
        await _finish(jobs, job, rng)
    live = await _memory(redis, [KEYS.job(job.id) for job in items]) / ITEMS
    ended = await batches.get(batch.id)
    assert ended is not None and ended.finished_at is not None
    await batches.compact(ended)
    compacted = await _memory(redis, [*await _result_keys(redis, batch), KEYS.batch(batch.id)]) / ITEMS
    assert await redis.exists(KEYS.job(items[0].id)) == 0
    return live, compacted


def test_compacted_results_take_a_small_fraction_of_live_job_records(redis_server_url: str) -> None:
    async def scenario() -> tuple[float, float]:
        redis = Redis.from_url(redis_server_url)
        try:
            return await _run_batch(redis)
        finally:
            await redis.flushdb()
            await redis.aclose()

    live, compacted = asyncio.run(scenario())
    print(f"\nRedis bytes per item: live job record {live:.0f}, compacted {compacted:.1f}")
    assert compacted <= MAX_COMPACT_BYTES_PER_ITEM
    assert compacted * 10 < live


async def _run_long_batch(redis: Redis) -> tuple[float, int]:
    """A batch of 10 results chunks, 7.5 of them ended: the ended chunks compacted as the API does, mid-run."""
    batches = BatchStore(redis, KEYS, ttl_s=3600)
    jobs = JobStore(redis, KEYS, ttl_s=3600)
    batch, items = await _new_batch(redis, 10 * RESULTS_CHUNK_ITEMS)
    ended = items[: 7 * RESULTS_CHUNK_ITEMS + RESULTS_CHUNK_ITEMS // 2]
    rng = random.Random(7)
    closer = BatchCloser(redis, KEYS, batches, send_task=lambda *args, **kwargs: None)
    for job in ended:
        await _finish(jobs, job, rng)
    while await closer.compact_next() is not None:
        pass
    running = await batches.get(batch.id)
    assert running is not None and running.state is BatchState.RUNNING
    assert running.compacted_chunks == frozenset(range(7))
    live_finished = int(await redis.exists(*(KEYS.job(job.id) for job in ended)))
    # The ended items' share of Redis: their compacted chunks, their records not compacted yet, the batch hash.
    compacted = await _memory(redis, [*await _result_keys(redis, batch), KEYS.batch(batch.id)])
    uncompacted = await _memory(redis, [KEYS.job(job.id) for job in ended[7 * RESULTS_CHUNK_ITEMS :]])
    rows = await batches.read_results(running, 0, len(items))
    assert [row.status for row in rows].count(JobStatus.SUCCEEDED) == len(ended)
    return (compacted + uncompacted) / len(ended), live_finished


def test_a_running_batch_keeps_full_records_only_for_its_chunks_not_ended(redis_server_url: str) -> None:
    async def scenario() -> tuple[float, int]:
        redis = Redis.from_url(redis_server_url)
        try:
            return await _run_long_batch(redis)
        finally:
            await redis.flushdb()
            await redis.aclose()

    per_item, live_finished = asyncio.run(scenario())
    print(f"\nRedis bytes per ended item of a running batch (7.5 of 10 chunks ended): {per_item:.1f}")
    # Only the chunk still running keeps the records of its ended items.
    assert live_finished == RESULTS_CHUNK_ITEMS // 2
    assert per_item <= MAX_RUNNING_BYTES_PER_ENDED_ITEM
