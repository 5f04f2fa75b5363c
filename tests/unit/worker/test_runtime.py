"""CaptionRuntime: the model loader (stand-ins included), the batcher's and preparer's view of the model, the
one bridge from Celery threads (jobs and chunks), bulk items in hand bounded, and orphans requeued where they belong."""

from __future__ import annotations

import asyncio
import io
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from PIL import Image

import worker.runtime
from shared.jobs.model import Job, JobStatus
from shared.jobs.store import JobStore
from shared.keys import CAPTION_CHUNK_TASK, CAPTION_TASK, Keys
from shared.settings import Settings
from tests.fakes import FakeCaptioner, FakeQueue, fake_caption
from worker.captioning.chunks import ChunkRunner, ItemsInHand
from worker.captioning.standins import STANDIN_CAPTION, NullCaptioner, SleepCaptioner
from worker.intake.decoders import DecodeProcesses
from worker.runtime import CaptionRuntime, caption_fn_for, load_captioner, prepare_fn_for


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Every Redis client the runtime makes talks to this fake server."""
    fake = FakeServer()
    monkeypatch.setattr(worker.runtime, "Redis", SimpleNamespace(from_url=lambda *a, **k: FakeRedis(server=fake)))
    return fake


def _png(width: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, 10)).save(out, "PNG")
    return out.getvalue()


def test_the_null_stand_in_loads_without_torch_and_answers_a_fixed_caption() -> None:
    model = load_captioner(Settings(model="null"))
    assert isinstance(model, NullCaptioner) and model.name == "null"
    assert (
        model.generate_from_tensors(model.preprocess([Image.new("RGB", (4, 4))] * 3), None, [5] * 3)
        == [STANDIN_CAPTION] * 3
    )


def test_the_sleep_stand_in_holds_each_batch_for_its_milliseconds() -> None:
    model = load_captioner(Settings(model="sleep:2.5"))
    assert isinstance(model, SleepCaptioner) and model.batch_ms == 2.5 and model.name == "sleep:2.5"


@pytest.mark.parametrize("name", ["sleep:", "sleep:abc", "sleepy", "nullish"])
def test_names_that_only_look_like_stand_ins_are_not_stand_ins(name: str) -> None:
    from worker.captioning.standins import load_standin

    assert load_standin(name) is None


def test_the_batcher_sees_one_call_per_batch_with_each_row_s_limit() -> None:
    model = FakeCaptioner()
    caption = caption_fn_for(model, Settings())  # type: ignore[arg-type]
    rows = [model.preprocess([Image.new("RGB", (w, 3))]) for w in (5, 6)]
    assert caption(rows, "q", [3, 9]) == [fake_caption(Image.new("RGB", (w, 3)), "q") for w in (5, 6)]
    assert model.limits == [[3, 9]] and model.batches == [2]


def test_preparing_decodes_then_runs_the_model_s_preprocessing() -> None:
    prepare = prepare_fn_for(FakeCaptioner(), Settings(), None)  # type: ignore[arg-type]
    prepared = asyncio.run(prepare(_png(30)))
    assert [image.size for image in prepared] == [(30, 10)]


def test_preparing_with_decoding_children_gives_the_same_input() -> None:
    async def scenario() -> list[tuple[int, int]]:
        decoders = DecodeProcesses(Settings(), model_input_px=FakeCaptioner().input_size_px, processes=1)
        try:
            prepared = await prepare_fn_for(FakeCaptioner(), Settings(), decoders)(_png(30))  # type: ignore[arg-type]
            return [image.size for image in prepared]
        finally:
            decoders.close()

    assert asyncio.run(scenario()) == [(30, 10)]


def test_a_chunk_with_more_images_than_the_limit_enters_alone_and_the_next_waits() -> None:
    async def scenario() -> None:
        in_hand = ItemsInHand(limit=4)
        await in_hand.enter(6)  # larger than the limit, but nothing else is in hand
        waiting = asyncio.create_task(in_hand.enter(1))
        await asyncio.sleep(0)
        assert not waiting.done() and in_hand.count == 6
        in_hand.leave(6)
        await asyncio.wait_for(waiting, 5)
        assert in_hand.count == 1

    asyncio.run(scenario())


def test_a_key_below_its_share_enters_while_another_keys_chunks_fill_the_room() -> None:
    async def scenario() -> None:
        in_hand = ItemsInHand(limit=24)
        await in_hand.enter(32, "hanging")  # one chunk larger than the room: it enters alone
        second = asyncio.create_task(in_hand.enter(32, "hanging"))
        small = asyncio.create_task(in_hand.enter(10, "small"))
        await asyncio.wait_for(small, 5)  # below its share (24 / 2 keys), within the ceiling (48)
        assert not second.done() and in_hand.by_owner == {"hanging": 32, "small": 10}
        # Below the ceiling (48) a key below its share enters, whatever its size; at the ceiling none does.
        third_key = asyncio.create_task(in_hand.enter(10, "third"))
        await asyncio.wait_for(third_key, 5)
        fourth_key = asyncio.create_task(in_hand.enter(1, "fourth"))
        await asyncio.sleep(0)
        assert not fourth_key.done() and in_hand.count == 52
        in_hand.leave(10, "small")
        await asyncio.wait_for(fourth_key, 5)
        assert not second.done() and in_hand.waiting() == 1
        in_hand.leave(32, "hanging")
        in_hand.leave(10, "third")
        in_hand.leave(1, "fourth")
        await asyncio.wait_for(second, 5)
        assert in_hand.by_owner == {"hanging": 32}

    asyncio.run(scenario())


def test_waiting_chunks_enter_round_robin_by_key_whatever_each_queued_first() -> None:
    async def scenario() -> None:
        in_hand = ItemsInHand(limit=4)
        await in_hand.enter(4, "greedy")
        await in_hand.enter(4, "small")  # below its share: up to the ceiling (8)
        entered: list[str] = []

        async def enter(owner: str) -> None:
            await in_hand.enter(4, owner)
            entered.append(owner)

        waiting = []
        for owner in ["greedy", "greedy", "small"]:  # greedy's two chunks arrived first
            waiting.append(asyncio.create_task(enter(owner)))
            await asyncio.sleep(0)
        for owner in ["greedy", "small", "greedy"]:  # the chunks in hand end one by one
            in_hand.leave(4, owner)
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        assert entered == ["greedy", "small", "greedy"]

    asyncio.run(scenario())


def test_a_cancelled_chunk_leaves_no_count_behind() -> None:
    async def scenario() -> None:
        in_hand = ItemsInHand(limit=4)
        await in_hand.enter(4, "a")
        waiting = asyncio.create_task(in_hand.enter(4, "a"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        in_hand.leave(4, "a")
        assert (in_hand.count, in_hand.by_owner, in_hand.waiting()) == (0, {}, 0)

    asyncio.run(scenario())


def test_jobs_and_chunks_run_from_other_threads_through_the_runtime(server: FakeServer) -> None:
    settings = Settings(key_prefix="captionizer", worker_metrics_port=0, max_batch_size=4, bulk_items_in_hand=4)
    model = FakeCaptioner()
    runtime = CaptionRuntime(settings, FakeQueue().send_task, model)  # type: ignore[arg-type]
    ids = [f"job_upload_{n}" for n in range(9)]
    for n, job_id in enumerate(ids):
        asyncio.run(_create(server, Job(id=job_id, source="upload", max_new_tokens=3 + n), _png(20 + n)))
    runtime.start()
    try:
        results: list[Any] = []
        chunks = [ids[0:4], ids[4:8]]
        threads = [threading.Thread(target=lambda c=c: results.append(runtime.run_chunk(c))) for c in chunks]
        threads.append(threading.Thread(target=lambda: results.append(runtime.run_job(ids[8]))))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(map(str, results)) == sorted(map(str, [[JobStatus.SUCCEEDED] * 4] * 2 + [JobStatus.SUCCEEDED]))
        jobs = [asyncio.run(_get(server, job_id)) for job_id in ids]
        assert all(job is not None and job.caption == fake_caption(Image.new("RGB", (20 + n, 10))) for n, job in
                   enumerate(jobs))  # fmt: skip
        # Four bulk images in hand at most: the second chunk began only once the first had ended.
        first, second = sorted(([job for job in jobs[0:4]], [job for job in jobs[4:8]]), key=_first_start)
        assert max(job.finished_at for job in first) <= min(job.started_at for job in second)  # type: ignore[union-attr,type-var]
    finally:
        runtime.stop()


def test_an_orphaned_batch_item_goes_back_to_the_bulk_queue_as_a_chunk_of_one(server: FakeServer) -> None:
    queue = FakeQueue()
    runtime = CaptionRuntime(Settings(worker_metrics_port=0), queue.send_task, FakeCaptioner())  # type: ignore[arg-type]
    item = SimpleNamespace(id="job_item", batch_id="bat_1")
    single = Job(id="job_single")

    async def scenario() -> None:
        await runtime._requeue(item)  # type: ignore[arg-type]
        await runtime._requeue(single)

    try:
        asyncio.run(scenario())
    finally:
        runtime.stop()
    keys = Keys()
    assert queue.sent == [
        (CAPTION_CHUNK_TASK, [["job_item"]], keys.bulk_queue()),
        (CAPTION_TASK, ["job_single"], keys.caption_queue()),
    ]


def _first_start(jobs: list[Any]) -> Any:
    return min(job.started_at for job in jobs)


async def _create(server: FakeServer, job: Job, data: bytes) -> None:
    async with FakeRedis(server=server) as redis:
        await JobStore(redis, Keys(), 600).create(job, upload=data)


async def _get(server: FakeServer, job_id: str) -> Job | None:
    async with FakeRedis(server=server) as redis:
        return await JobStore(redis, Keys(), 600).get(job_id)


def test_a_chunk_that_ended_no_longer_counts_toward_its_key_s_cap(server: FakeServer) -> None:
    settings = Settings(key_prefix="captionizer", worker_metrics_port=0, max_batch_size=4, decode_cpu_budget_s=0)
    runtime = CaptionRuntime(settings, FakeQueue().send_task, FakeCaptioner())  # type: ignore[arg-type]
    ids = [f"job_upload_{n}" for n in range(2)]
    for job_id in ids:
        asyncio.run(_create(server, Job(id=job_id, source="upload", max_new_tokens=3), _png(20)))

    async def out(*members: str) -> set[bytes]:
        async with FakeRedis(server=server) as redis:
            if members:
                await redis.zadd(Keys().bulk_out("key_a"), dict.fromkeys(members, 1e12))
            return set(await redis.zrange(Keys().bulk_out("key_a"), 0, -1))

    assert asyncio.run(out("chunk-1", "chunk-2")) == {b"chunk-1", b"chunk-2"}  # fed, held by workers
    runtime.start()
    try:
        assert runtime.run_chunk(ids, "key_a", "chunk-1") == [JobStatus.SUCCEEDED] * 2
    finally:
        runtime.stop()
    assert asyncio.run(out()) == {b"chunk-2"}


def test_each_image_of_a_chunk_leaves_the_room_as_its_job_ends() -> None:
    async def scenario() -> None:
        hanging = asyncio.Event()

        async def get_many(ids: list[str]) -> dict[str, Any]:
            return {}

        async def run_seen(job_id: str, seen: Any, *, interactive: bool) -> JobStatus:
            if job_id == "hangs":
                await hanging.wait()
            return JobStatus.SUCCEEDED

        runner = SimpleNamespace(store=SimpleNamespace(get_many=get_many), run_seen=run_seen)
        chunks = ChunkRunner(runner, max_items_in_hand=4)  # type: ignore[arg-type]
        first = asyncio.create_task(chunks.run(["hangs", "a", "b", "c"], "k"))
        second = asyncio.create_task(chunks.run(["d", "e", "f"], "k"))
        # The second chunk's three images fit once the first's three quick ones have left.
        assert await asyncio.wait_for(second, 5) == [JobStatus.SUCCEEDED] * 3
        assert not first.done() and chunks.in_hand.count == 1
        hanging.set()
        assert await asyncio.wait_for(first, 5) == [JobStatus.SUCCEEDED] * 4
        assert (chunks.in_hand.count, chunks.in_hand.by_owner) == (0, {})

    asyncio.run(scenario())


def test_a_key_alone_never_has_more_than_the_room_whatever_its_share() -> None:
    async def scenario() -> None:
        in_hand = ItemsInHand(limit=8)
        await in_hand.enter(6, "alone")
        waiting = asyncio.create_task(in_hand.enter(4, "alone"))
        await asyncio.sleep(0)
        assert not waiting.done() and in_hand.count == 6
        in_hand.leave(6, "alone")
        await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())
