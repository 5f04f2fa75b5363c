"""Redis bytes per batch item, measured with MEMORY USAGE on a real redis-server: live job records vs compacted.

Run with ``-s`` to see the figures docs/batches.md quotes.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from redis.asyncio import Redis

from shared.batch_store import BatchStore
from shared.batches import Batch, item_job_id, new_batch_id
from shared.jobs import Job, JobStatus, JobTimings, utc_now
from shared.keys import Keys
from shared.store import JobStore

ITEMS = 1_000
KEYS = Keys("memtest")
#: Ceiling on a compacted item (docs/batches.md quotes the measured figure).
MAX_COMPACT_BYTES_PER_ITEM = 120
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


async def _run_batch(redis: Redis) -> tuple[float, float]:
    batches = BatchStore(redis, KEYS, ttl_s=3600)
    jobs = JobStore(redis, KEYS, ttl_s=3600)
    now = utc_now()
    batch = Batch(
        id=new_batch_id(),
        owner="key_0123456789abcdef",
        total=ITEMS,
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
        for i in range(ITEMS)
    ]
    await batches.create(batch, items, {}, upload_ttl_s=60)
    rng = random.Random(5)
    for job in items:
        # What a worker writes on the way (timings, model, stage), as in production.
        assert await jobs.transition(job.id, JobStatus.RUNNING, started_at=utc_now(), stage="captioning")
        timings = JobTimings(
            queue_wait_s=1.2, fetch_s=0.05, batch_wait_s=0.01, generate_s=0.2, total_s=1.5, batch_size=32
        )
        caption = _caption(rng)
        assert await jobs.transition(
            job.id, JobStatus.SUCCEEDED, caption=caption, finished_at=utc_now(), model="embedded", timings=timings
        )
    live = await _memory(redis, [KEYS.job(job.id) for job in items]) / ITEMS
    ended = await batches.get(batch.id)
    assert ended is not None and ended.finished_at is not None
    await batches.compact(ended)
    result_keys = [key.decode() async for key in redis.scan_iter(match=KEYS.batch_results(batch.id, 0)[:-1] + "*")]
    compacted = await _memory(redis, [*result_keys, KEYS.batch(batch.id)]) / ITEMS
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
