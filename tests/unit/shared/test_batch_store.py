"""BatchStore over fakeredis: item counts follow JobStore.transition, the batch ends once, results compact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import fakeredis.aioredis
import pytest

import shared.jobs
from api.batches.closer import BatchCloser
from shared.batches.model import (
    Batch,
    BatchItemResult,
    BatchState,
    item_job_id,
    new_batch_id,
    parse_item_job_id,
)
from shared.batches.results import RESULTS_CHUNK_ITEMS, decode_rows, encode_rows
from shared.batches.store import BatchStore
from shared.errors import BatchClosed, OwnerQuotaExceeded, TooManyItemsInFlight
from shared.jobs.model import Job, JobErrorInfo, JobStatus, utc_now
from shared.jobs.shares import OwnerShares
from shared.jobs.store import JobStore
from shared.keys import Keys

KEYS = Keys("t")
Scenario = Callable[[BatchStore, JobStore, fakeredis.aioredis.FakeRedis], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        await scenario(BatchStore(redis, KEYS, ttl_s=3600), JobStore(redis, KEYS, ttl_s=3600), redis)

    asyncio.run(main())


async def make_batch(batches: BatchStore, total: int, *, is_open: bool = False, owner: str = "o") -> Batch:
    now = utc_now()
    batch = Batch(
        id=new_batch_id(),
        owner=owner,
        total=total,
        is_open=is_open,
        max_new_tokens=12,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    items = [
        Job(
            id=item_job_id(batch.id, i), owner=owner, image_url=f"https://e.com/{i}.png", batch_id=batch.id, ref=f"r{i}"
        )
        for i in range(total)
    ]
    await batches.create(batch, items, {}, upload_ttl_s=60, shares=OwnerShares(max_items_in_flight=100_000))
    return batch


async def finish(jobs: JobStore, job_id: str, caption: str = "a cat") -> None:
    assert await jobs.transition(job_id, JobStatus.RUNNING)
    assert await jobs.transition(job_id, JobStatus.SUCCEEDED, caption=caption, finished_at=utc_now())


def test_item_ids_carry_their_batch_and_never_look_like_single_jobs() -> None:
    batch_id = new_batch_id()
    assert parse_item_job_id(item_job_id(batch_id, 9_999)) == (batch_id, 9_999)
    assert parse_item_job_id("job_" + "A" * 22) is None  # a single job's id
    assert parse_item_job_id(item_job_id(batch_id, 1) + "x") is None
    assert parse_item_job_id("job_" + "A" * 22 + "_01") is None  # no leading zeros: one id per index


def test_counts_follow_every_transition_and_the_last_item_ends_the_batch_once() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        batch = await make_batch(batches, 3)
        first, second, third = (item_job_id(batch.id, i) for i in range(3))
        assert await jobs.transition(first, JobStatus.RUNNING)
        running = await batches.get(batch.id)
        assert running is not None and running.started_at is not None
        assert running.counts[JobStatus.QUEUED] == 2 and running.counts[JobStatus.RUNNING] == 1
        assert await jobs.transition(first, JobStatus.SUCCEEDED, caption="x")
        assert await jobs.transition(second, JobStatus.FAILED, error=JobErrorInfo(code="fetch_failed", message="404"))
        # A duplicate delivery changes nothing.
        assert not await jobs.transition(first, JobStatus.SUCCEEDED, caption="y")
        assert await redis.llen(KEYS.batches_ended()) == 0
        await finish(jobs, third)
        ended = await batches.get(batch.id)
        assert ended is not None and ended.state is BatchState.COMPLETED and ended.done == 3
        assert ended.counts == {
            JobStatus.QUEUED: 0,
            JobStatus.RUNNING: 0,
            JobStatus.SUCCEEDED: 2,
            JobStatus.FAILED: 1,
        }
        assert await redis.lrange(KEYS.batches_ended(), 0, -1) == [batch.id.encode()]
        assert int(await redis.get(KEYS.items_in_flight("o"))) == 0

    run(scenario)


def test_an_open_batch_ends_only_when_closed_and_append_refuses_a_closed_batch() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        batch = await make_batch(batches, 1, is_open=True)
        await finish(jobs, item_job_id(batch.id, 0))
        still_open = await batches.get(batch.id)
        assert still_open is not None and still_open.state is BatchState.OPEN
        assert await batches.allocate(batch.id, 5) == 1
        assert (await batches.get(batch.id)).total == 6  # type: ignore[union-attr]
        assert not await batches.close(batch.id)  # five items still to end
        with pytest.raises(BatchClosed):
            await batches.allocate(batch.id, 1)

    run(scenario)


def test_closing_a_batch_whose_items_have_all_ended_ends_it() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        batch = await make_batch(batches, 2, is_open=True)
        for index in range(2):
            await finish(jobs, item_job_id(batch.id, index))
        assert await batches.close(batch.id)
        assert await redis.llen(KEYS.batches_ended()) == 1

    run(scenario)


def test_items_in_flight_and_upload_bytes_are_counted_by_the_create_script_all_or_nothing() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        shares = OwnerShares(max_upload_bytes=100, max_total_upload_bytes=1_000, max_items_in_flight=10)
        now = utc_now()

        def new_batch(total: int) -> tuple[Batch, list[Job]]:
            batch = Batch(id=new_batch_id(), owner="o", total=total, max_new_tokens=12, created_at=now, expires_at=now)
            return batch, [
                Job(id=item_job_id(batch.id, i), owner="o", source="upload", batch_id=batch.id) for i in range(total)
            ]

        first, items = new_batch(8)
        await batches.create(first, items, {items[0].id: b"x" * 60}, upload_ttl_s=60, shares=shares)
        assert int(await redis.get(KEYS.items_in_flight("o"))) == 8
        # Three more would pass the cap of 10; two more inline images would pass the upload share of 100.
        over_cap, items = new_batch(3)
        with pytest.raises(TooManyItemsInFlight):
            await batches.create(over_cap, items, {}, upload_ttl_s=60, shares=shares)
        over_bytes, items = new_batch(2)
        with pytest.raises(OwnerQuotaExceeded):
            await batches.create(over_bytes, items, {items[0].id: b"y" * 41}, upload_ttl_s=60, shares=shares)
        # Refused, they left nothing: no batch, no item, no upload, no count.
        for refused in (over_cap, over_bytes):
            assert await batches.get(refused.id) is None
            assert await jobs.get(item_job_id(refused.id, 0)) is None
            assert await redis.exists(KEYS.upload(item_job_id(refused.id, 0))) == 0
        assert int(await redis.get(KEYS.items_in_flight("o"))) == 8
        assert int(await redis.hget(KEYS.owner_upload_bytes(), "o")) == 60
        # Ending the item with the upload gives its bytes back.
        await finish(jobs, item_job_id(first.id, 0))
        assert int(await redis.hget(KEYS.owner_upload_bytes(), "o")) == 0

    run(scenario)


def test_results_page_live_then_from_the_compacted_copy_and_jobs_are_rebuilt() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        total = RESULTS_CHUNK_ITEMS + 7
        batch = await make_batch(batches, total)
        for index in range(total):
            await finish(jobs, item_job_id(batch.id, index), caption=f"caption {index}")
        live = await batches.read_results(batch, RESULTS_CHUNK_ITEMS - 2, 5)
        ended = await batches.get(batch.id)
        assert ended is not None
        await batches.compact(ended)
        assert await redis.exists(KEYS.job(item_job_id(batch.id, 0))) == 0
        compacted = await batches.get(batch.id)
        assert compacted is not None and compacted.is_compacted
        assert await batches.read_results(compacted, RESULTS_CHUNK_ITEMS - 2, 5) == live
        assert [row.caption for row in live] == [f"caption {i}" for i in range(total - 9, total - 4)]
        # A page read with the batch as it was before compaction still finds the results.
        assert await batches.read_results(batch, RESULTS_CHUNK_ITEMS - 2, 5) == live
        job = await batches.read_item_job(item_job_id(batch.id, total - 1))
        assert job is not None and job.caption == f"caption {total - 1}" and job.ref == f"r{total - 1}"
        assert job.owner == "o" and job.status is JobStatus.SUCCEEDED

    run(scenario)


def test_cancel_many_counts_each_item_once() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        batch = await make_batch(batches, 4)
        await finish(jobs, item_job_id(batch.id, 0))
        assert await jobs.transition(item_job_id(batch.id, 1), JobStatus.RUNNING)
        ids = [item_job_id(batch.id, i) for i in range(4)]
        outcomes = await jobs.transition_many(
            ids, JobStatus.CANCELED, from_status=[JobStatus.QUEUED, JobStatus.RUNNING]
        )
        assert outcomes == [False, True, True, True]
        ended = await batches.get(batch.id)
        assert ended is not None and ended.done == 4
        assert ended.counts[JobStatus.CANCELED] == 3 and ended.counts[JobStatus.RUNNING] == 0

    run(scenario)


def test_compact_rows_round_trip() -> None:
    batch_id = new_batch_id()
    rows = [
        BatchItemResult(
            index=0, id=item_job_id(batch_id, 0), ref="é", status=JobStatus.SUCCEEDED, caption="x", error=None
        ),
        BatchItemResult(
            index=1,
            id=item_job_id(batch_id, 1),
            ref=None,
            status=JobStatus.FAILED,
            caption=None,
            error=JobErrorInfo(code="fetch_failed", message="404", upstream_status=404),
        ),
    ]
    assert decode_rows(batch_id, 0, encode_rows(rows)) == rows


def test_a_results_chunk_is_listed_once_when_its_last_item_ends_and_compacts_while_the_batch_runs() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        total = 2 * RESULTS_CHUNK_ITEMS + 3
        batch = await make_batch(batches, total)
        # Chunk 1 ends first, out of order; one of its items is canceled rather than captioned.
        for index in range(RESULTS_CHUNK_ITEMS + 1, 2 * RESULTS_CHUNK_ITEMS):
            await finish(jobs, item_job_id(batch.id, index), caption=f"caption {index}")
        assert await redis.llen(KEYS.result_chunks_ended()) == 0
        last = item_job_id(batch.id, RESULTS_CHUNK_ITEMS)
        assert await jobs.transition(last, JobStatus.CANCELED)
        assert await redis.lrange(KEYS.result_chunks_ended(), 0, -1) == [f"{batch.id}:1".encode()]
        before = await batches.read_results(batch, RESULTS_CHUNK_ITEMS - 2, 5)
        assert await batches.compact_chunk(batch, 1)
        assert not await batches.compact_chunk(batch, 1)  # its records are gone: another process did it
        running = await batches.get(batch.id)
        assert running is not None and running.state is BatchState.RUNNING
        assert running.compacted_chunks == frozenset({1}) and not running.is_compacted
        assert await redis.exists(KEYS.job(last)) == 0
        assert await redis.exists(KEYS.job(item_job_id(batch.id, 0))) == 1
        # A page across a live chunk and a compacted one, read with the batch as it was before, and as it is.
        assert await batches.read_results(batch, RESULTS_CHUNK_ITEMS - 2, 5) == before
        assert await batches.read_results(running, RESULTS_CHUNK_ITEMS - 2, 5) == before
        assert [row.status for row in before] == [JobStatus.QUEUED] * 2 + [JobStatus.CANCELED] + [
            JobStatus.SUCCEEDED
        ] * 2
        job = await batches.read_item_job(item_job_id(batch.id, RESULTS_CHUNK_ITEMS + 1))
        assert job is not None and job.caption == f"caption {RESULTS_CHUNK_ITEMS + 1}" and job.finished_at is None
        assert await batches.read_item_job(item_job_id(batch.id, 0)) is None  # live: the job record answers
        # The batch ends: the other chunks are compacted then, and chunk 1 is not written twice.
        for index in [*range(RESULTS_CHUNK_ITEMS), *range(2 * RESULTS_CHUNK_ITEMS, total)]:
            await finish(jobs, item_job_id(batch.id, index), caption=f"caption {index}")
        assert await redis.lrange(KEYS.result_chunks_ended(), 0, -1) == [f"{batch.id}:{c}".encode() for c in (1, 0)]
        ended = await batches.get(batch.id)
        assert ended is not None and ended.finished_at is not None
        await batches.compact(ended)
        compacted = await batches.get(batch.id)
        assert compacted is not None and compacted.is_compacted
        rows = await batches.read_results(compacted, 0, total)
        assert [row.index for row in rows] == list(range(total))
        assert rows[RESULTS_CHUNK_ITEMS].status is JobStatus.CANCELED
        assert all(row.caption == f"caption {row.index}" for row in rows if row.index != RESULTS_CHUNK_ITEMS)
        assert not [key async for key in redis.scan_iter(match=KEYS.job("*"))]

    run(scenario)


def test_the_closer_compacts_listed_chunks_and_picks_up_what_a_dead_api_left() -> None:
    async def scenario(batches: BatchStore, jobs: JobStore, redis: fakeredis.aioredis.FakeRedis) -> None:
        batch = await make_batch(batches, RESULTS_CHUNK_ITEMS + 1)
        for index in range(RESULTS_CHUNK_ITEMS):
            await finish(jobs, item_job_id(batch.id, index))
        # An earlier API process took the entry and died before compacting it.
        await redis.lmove(KEYS.result_chunks_ended(), KEYS.result_chunks_compacting(), "LEFT", "RIGHT")
        await redis.rpush(KEYS.result_chunks_ended(), "bat_gone:0", "not an entry")
        closer = BatchCloser(redis, KEYS, batches, send_task=lambda *args, **kwargs: None)
        await closer._recover()
        assert await closer.compact_next() == f"{batch.id}:0"
        assert await closer.compact_next() == "bat_gone:0"
        assert await closer.compact_next() == "not an entry"
        assert await closer.compact_next() is None
        assert await redis.llen(KEYS.result_chunks_compacting()) == 0
        current = await batches.get(batch.id)
        assert current is not None and current.compacted_chunks == frozenset({0})
        assert await redis.exists(KEYS.job(item_job_id(batch.id, 0))) == 0

    run(scenario)


def test_the_status_script_segments_results_as_the_compaction_reads_them() -> None:
    # transition.lua counts each results segment's ended items; its size must be the readers' own.
    lua = (Path(shared.jobs.__file__).parent / "transition.lua").read_text()
    assert f"local RESULTS_CHUNK_ITEMS = {RESULTS_CHUNK_ITEMS}\n" in lua
