"""BulkBacklog: each key's chunk messages reach the bulk queue round-robin, and only while it is short."""

from __future__ import annotations

import asyncio
import json

import fakeredis.aioredis

from shared.broker.bulk_backlog import BulkBacklog
from shared.heartbeats import WorkerHeartbeats
from shared.keys import Keys


def make_backlog(depth: int) -> BulkBacklog:
    return BulkBacklog(fakeredis.aioredis.FakeRedis(), Keys("t"), queue_depth=depth)


async def queued_in_consuming_order(backlog: BulkBacklog) -> list[bytes]:
    # kombu LPUSHes and BRPOPs: the list read from its right end is the consuming order.
    queued: list[bytes] = await backlog.redis.lrange(backlog.keys.bulk_queue(), 0, -1)
    return list(reversed(queued))


def test_keys_take_turns_whatever_each_queued_first() -> None:
    async def scenario() -> None:
        backlog = make_backlog(depth=100)
        await backlog.append("greedy", [f"a{n}".encode() for n in range(6)])
        await backlog.append("small", [b"b0", b"b1"])
        await backlog.append("third", [b"c0"])
        assert await backlog.feed() == 9
        order = await queued_in_consuming_order(backlog)
        assert order == [b"a0", b"b0", b"c0", b"a1", b"b1", b"a2", b"a3", b"a4", b"a5"]
        assert await backlog.redis.llen(backlog.keys.bulk_ring()) == 0

    asyncio.run(scenario())


def test_the_queue_is_fed_only_up_to_its_depth_so_a_late_key_waits_behind_at_most_that_many() -> None:
    async def scenario() -> None:
        backlog = make_backlog(depth=2)
        await backlog.append("greedy", [f"a{n}".encode() for n in range(2_000)])
        assert await backlog.feed() == 2
        assert await backlog.feed() == 0  # full: nothing moves
        await backlog.append("small", [b"b0"])
        # Workers take messages (BRPOP); each feed gives the next key on the ring its turn: the greedy
        # key was at the head, then the small one, whatever the greedy key still has waiting.
        for _ in range(2):
            await backlog.redis.rpop(backlog.keys.bulk_queue())
            assert await backlog.feed() == 1
        assert await queued_in_consuming_order(backlog) == [b"a2", b"b0"]
        assert await backlog.redis.llen(backlog.keys.bulk_backlog("greedy")) == 1_997

    asyncio.run(scenario())


def test_a_key_is_on_the_ring_once_while_it_has_a_backlog_and_the_sweep_sees_it() -> None:
    async def scenario() -> None:
        backlog = make_backlog(depth=1)
        await backlog.append("k", [b"m0"])
        await backlog.append("k", [b"m1", b"m2"])
        assert await backlog.redis.lrange(backlog.keys.bulk_ring(), 0, -1) == [b"k"]
        assert await backlog.backlog_names() == [backlog.keys.bulk_backlog("k")]
        assert await backlog.append("k", []) == 0

    asyncio.run(scenario())


def _celery_message(task_id: str) -> bytes:
    # What the feeder reads of Celery's message format (protocol 2): the task id in the headers.
    return json.dumps({"body": "", "headers": {"id": task_id, "task": "captionizer.caption_chunk"}}).encode()


def test_a_key_at_its_cap_of_chunks_out_is_passed_over_until_a_worker_releases_one() -> None:
    async def scenario() -> None:
        backlog = BulkBacklog(fakeredis.aioredis.FakeRedis(), Keys("t"), queue_depth=100, chunks_per_key=2)
        await backlog.append("hanging", [_celery_message(f"a{n}") for n in range(5)])
        await backlog.append("small", [_celery_message("b0")])
        # Two keys with a backlog: the cap of 2 is split, 1 each: a0, b0.
        assert await backlog.feed() == 2
        # The small key has no backlog left: the hanging key alone may have 2 out, a1.
        assert await backlog.feed() == 1
        assert await backlog.chunks_out("hanging") == 2
        assert await backlog.feed() == 0
        await backlog.release("hanging", "a0")  # a worker ended chunk a0
        assert await backlog.feed() == 1
        order = [json.loads(raw)["headers"]["id"] for raw in await queued_in_consuming_order(backlog)]
        assert order == ["a0", "b0", "a1", "a2"]

    asyncio.run(scenario())


def test_keys_that_hang_together_never_have_more_out_than_one_key_may() -> None:
    async def scenario() -> None:
        backlog = BulkBacklog(fakeredis.aioredis.FakeRedis(), Keys("t"), queue_depth=100, chunks_per_key=8)
        for owner in ("a", "c"):
            await backlog.append(owner, [_celery_message(f"{owner}{n}") for n in range(50)])
        await backlog.feed()
        # Half of the 8 each (one ready worker or none): 8 out in all, below the 12 a worker holds.
        assert (await backlog.chunks_out("a"), await backlog.chunks_out("c")) == (4, 4)
        # A third key arrives while both hang (nothing released): it gets its turn at once.
        await backlog.append("b", [_celery_message("b0")])
        assert await backlog.feed() == 1
        assert await backlog.chunks_out("b") == 1

    asyncio.run(scenario())


def test_the_cap_grows_with_the_ready_workers() -> None:
    async def scenario() -> None:
        backlog = BulkBacklog(fakeredis.aioredis.FakeRedis(), Keys("t"), queue_depth=100, chunks_per_key=2)
        beats = WorkerHeartbeats(backlog.redis, backlog.keys)
        for worker_id in ("w1", "w2"):
            await beats.beat(worker_id, {}, ttl_s=60)
        await backlog.append("k", [_celery_message(f"a{n}") for n in range(9)])
        assert await backlog.feed() == 4

    asyncio.run(scenario())


def test_an_id_never_released_stops_counting_once_stale() -> None:
    async def scenario() -> None:
        backlog = BulkBacklog(fakeredis.aioredis.FakeRedis(), Keys("t"), queue_depth=100, chunks_per_key=1, stale_s=60)
        await backlog.append("k", [_celery_message("a0"), _celery_message("a1")])
        assert await backlog.feed() == 1
        # Fed two minutes ago and never released (its message lost with a Redis that restarted).
        await backlog.redis.zadd(backlog.keys.bulk_out("k"), {"a0": 1.0})
        assert await backlog.feed() == 1
        assert await backlog.chunks_out("k") == 1

    asyncio.run(scenario())
