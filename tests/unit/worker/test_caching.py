"""The caption cache on fakeredis: keys, the Lua scripts (claim, store and evict, leases) and the pipeline's hooks."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import fakeredis.aioredis
import pytest
from PIL import Image

from shared.errors import NotAnImage
from shared.jobs.model import Job, JobOptions, JobStatus, utc_now
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.fakes import FakeCaptioner, fake_caption
from worker.caching import CacheStore, CaptionCache
from worker.caching import store as cache_store
from worker.caching.cache import Claim
from worker.caching.identity import make_key, model_identity
from worker.caching.store import LEASED, WAIT, Entry, Link
from worker.captioning.batching import Batcher
from worker.captioning.pipeline import JobRunner
from worker.intake.images import ImageBytes, decode_image

KEYS = Keys("t")


def png(color: tuple[int, int, int] = (220, 30, 30), size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "PNG")
    return out.getvalue()


def new_store(redis: Any, *, max_entries: int = 100, ttl_s: int = 600, lease_s: float = 5.0) -> CacheStore:
    return CacheStore(redis, KEYS, max_entries=max_entries, ttl_s=ttl_s, lease_s=lease_s)


# --- the key ------------------------------------------------------------------------


def key(owner: str = "alice", data: bytes = b"image", model: str = "m@r1", **changes: Any) -> str:
    settings = Settings(**{name: value for name, value in changes.items() if name in Settings.model_fields})
    options = JobOptions(**{name: value for name, value in changes.items() if name in JobOptions.model_fields})
    return make_key(owner, ImageBytes.of(data).sha256, options, model=model, settings=settings).digest


@pytest.mark.parametrize(
    "changed",
    [
        {"data": b"image!"},
        {"model": "m@r2"},
        {"prompt": "a photo of"},
        {"max_new_tokens": 12},
        {"num_beams": 3},
        {"max_image_pixels": 1_000},
        {"owner": "mallory"},
    ],
    ids=lambda changed: next(iter(changed)),
)
def test_any_change_to_bytes_model_options_or_owner_changes_the_key(changed: dict[str, Any]) -> None:
    assert key(**changed) != key()


def test_a_shared_cache_keys_every_owner_alike() -> None:
    assert key("alice", cache_shared=True) == key("mallory", cache_shared=True)


def test_the_model_identity_names_the_revision_dtype_and_device() -> None:
    model = FakeCaptioner()
    assert model_identity(model) == "fake@fake//cpu"


# --- the store's scripts --------------------------------------------------------------


def test_a_miss_leases_the_key_an_identical_claim_waits_and_then_hits() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis)
        assert await store.claim("d1", "job_a") == LEASED
        assert await store.claim("d1", "job_b") == WAIT
        assert await store.claim("d1", "job_a") == LEASED  # a redelivery of the holder keeps its lease
        await store.store("d1", Entry(job_id="job_a", owner_tag="o", caption="a red square"), ttl_s=600)
        assert not await redis.exists(KEYS.cache_lease("d1"))
        hit = await store.claim("d1", "job_b", waited=True)
        assert hit == Entry(job_id="job_a", owner_tag="o", caption="a red square")
        stats = await redis.hgetall(KEYS.cache_stats())
        assert stats == {b"misses": b"2", b"hits": b"1", b"deduplicated": b"1"}

    asyncio.run(scenario())


def test_claims_in_one_loop_turn_are_one_script_call() -> None:
    async def scenario() -> None:
        store = new_store(fakeredis.aioredis.FakeRedis())
        calls: list[int] = []
        script = store._claim

        async def counting(keys: list[str], args: list[Any]) -> Any:
            calls.append(len(keys))
            return await script(keys=keys, args=args)

        store._claim = counting  # type: ignore[assignment]
        replies = await asyncio.gather(*(store.claim(f"d{i % 3}", f"job_{i}") for i in range(9)))
        assert calls == [2 + 2 * 9]
        assert replies.count(LEASED) == 3 and replies.count(WAIT) == 6

    asyncio.run(scenario())


@pytest.fixture
def ordered_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A distinct last-use score (ms) per script call: the eviction order under test."""
    clock = iter(range(1_000_000, 2_000_000, 10))
    monkeypatch.setattr(cache_store, "_now_ms", lambda: next(clock))


@pytest.mark.usefixtures("ordered_clock")
def test_past_the_bound_the_least_recently_used_entries_are_evicted() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis, max_entries=3)
        for i in range(3):
            await store.store(f"d{i}", Entry(job_id=f"job_{i}", owner_tag="o", caption=f"c{i}"), ttl_s=600)
        assert isinstance(await store.claim("d0", "job_x"), Entry)  # d0 used again: d1 is now the oldest
        evicted = await store.store("d3", Entry(job_id="job_3", owner_tag="o", caption="c3"), ttl_s=600)
        assert evicted == 1
        assert not await redis.exists(KEYS.cache_entry("d1"))
        assert all([await redis.exists(KEYS.cache_entry(d)) for d in ("d0", "d2", "d3")])
        assert await redis.zcard(KEYS.cache_lru()) == 3
        assert await redis.hget(KEYS.cache_stats(), "evictions") == b"1"

    asyncio.run(scenario())


def test_a_stream_of_distinct_entries_never_passes_the_bound() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis, max_entries=10)
        for i in range(50):
            await store.store(f"d{i}", Entry(job_id=f"job_{i}", owner_tag="o", caption="c"), ttl_s=600)
        entries = [key async for key in redis.scan_iter(KEYS.cache_entry("*"))]
        assert len(entries) == 10 and await redis.zcard(KEYS.cache_lru()) == 10
        assert await redis.hget(KEYS.cache_stats(), "evictions") == b"40"

    asyncio.run(scenario())


def test_a_released_lease_lets_the_waiting_job_compute() -> None:
    async def scenario() -> None:
        store = new_store(fakeredis.aioredis.FakeRedis())
        assert await store.claim("d1", "job_a") == LEASED
        assert await store.release({"d1": "job_b"}) == 0  # not job_b's lease: untouched
        assert await store.claim("d1", "job_b") == WAIT
        assert await store.release({"d1": "job_a"}) == 1
        assert await store.claim("d1", "job_b") == LEASED

    asyncio.run(scenario())


def test_a_lease_is_renewed_only_by_its_holder() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis, lease_s=5.0)
        await store.claim("d1", "job_a")
        store.lease_ms = 60_000
        assert await store.renew({"d1": "job_b"}) == 0
        assert await redis.pttl(KEYS.cache_lease("d1")) <= 5_000
        assert await store.renew({"d1": "job_a"}) == 1
        assert await redis.pttl(KEYS.cache_lease("d1")) > 5_000

    asyncio.run(scenario())


def test_a_fresh_urls_link_names_its_entry_and_a_peek_hits_without_a_claim() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis)
        assert await store.peek("u1") is None  # no link yet
        entry = Entry(job_id="job_a", owner_tag="o", caption="a red square")
        await store.store("d1", entry, ttl_s=600, links=[Link("u1", 60_000)])
        assert await store.peek("u1") == entry
        assert 0 < await redis.pttl(KEYS.cache_entry("u:u1")) <= 60_000
        assert await redis.hgetall(KEYS.cache_stats()) == {b"hits": b"1", b"fresh_url_hits": b"1"}
        await redis.delete(KEYS.cache_entry("d1"))
        assert await store.peek("u1") is None  # the entry is gone: the job downloads and claims as usual
        assert await redis.hget(KEYS.cache_stats(), "hits") == b"1"

    asyncio.run(scenario())


def test_a_peek_hit_keeps_the_links_ttl_and_renews_the_entrys() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis, ttl_s=600)
        await store.store("d1", Entry(job_id="job_a", owner_tag="o", caption="c"), ttl_s=600, links=[])
        await store.link("d1", [Link("u1", 30_000)])
        await redis.expire(KEYS.cache_entry("d1"), 100)
        assert await store.peek("u1") is not None
        # The server's promise is not extended by our use of it; the caption's life starts again.
        assert await redis.pttl(KEYS.cache_entry("u:u1")) <= 30_000
        assert await redis.ttl(KEYS.cache_entry("d1")) > 100

    asyncio.run(scenario())


@pytest.mark.usefixtures("ordered_clock")
def test_links_count_against_the_bound_and_are_evicted_like_entries() -> None:
    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = new_store(redis, max_entries=4)
        for i in range(10):
            entry = Entry(job_id=f"job_{i}", owner_tag="o", caption="c")
            await store.store(f"d{i}", entry, ttl_s=600, links=[Link(f"u{i}", 60_000)])
        names = [key async for key in redis.scan_iter(KEYS.cache_entry("*"))]
        assert len(names) == 4 and await redis.zcard(KEYS.cache_lru()) == 4
        assert sorted(name.decode().rsplit(":", 1)[-1] for name in names) == ["d8", "d9", "u8", "u9"]

    asyncio.run(scenario())


# --- the pipeline -------------------------------------------------------------------


@dataclass
class Harness:
    store: JobStore
    runner: JobRunner
    model: FakeCaptioner
    redis: Any
    prepared: list[int] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    #: Each download's URL, in order.
    fetched: list[str] = field(default_factory=list)
    #: Image name → what its server says: fresh for this many seconds (absent: nothing, 0).
    fresh_s: dict[str, float] = field(default_factory=dict)
    #: Image name → other bytes served in its place from now on (the image changed at its URL).
    replaced: dict[str, bytes] = field(default_factory=dict)
    #: Every status change announced, as (job id, status), in order.
    events: list[tuple[str, JobStatus]] = field(default_factory=list)

    async def add(self, url: str = "http://img.test/red.png", **fields: Any) -> Job:
        job = Job(id=f"job_{len(self.images)}_{utc_now().timestamp()}", image_url=url).model_copy(update=fields)
        self.images[job.id] = b""
        await self.store.create(job)
        return job

    async def job(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        assert job is not None
        return job


def run(scenario: Callable[[Harness], Awaitable[None]], **settings: Any) -> Harness:
    settings_obj = Settings(key_prefix="t", **settings)
    model = FakeCaptioner()
    holder: list[Harness] = []
    images = {"red": png(), "blue": png((20, 20, 200)), "garbage": b"GIF89a but not really an image at all"}

    async def fetch(url: str) -> ImageBytes:
        harness = holder[0]
        harness.fetched.append(url)
        name = url.rsplit("/", 1)[-1].split(".")[0]
        image = ImageBytes.of(harness.replaced.get(name, images[name]))
        return ImageBytes(image.data, image.sha256, harness.fresh_s.get(name, 0.0))

    async def prepare(data: bytes) -> Any:
        holder[0].prepared.append(len(data))
        return decode_image(data, settings_obj, model_input_px=model.input_size_px)

    async def main() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, KEYS, ttl_s=600)
        batcher = Batcher(
            lambda inputs, prompt, limits: model.caption(list(inputs), prompt, max(limits)),
            max_batch_size=8,
            max_wait_s=0.005,
        )
        batcher.start()
        cache = CaptionCache(new_store(redis), settings_obj, model=model_identity(model))

        async def on_event(job: Job, status: JobStatus) -> None:
            holder[0].events.append((job.id, status))

        runner = JobRunner(
            settings_obj, store, batcher, fetch=fetch, prepare=prepare, model_name="fake", on_event=on_event,
            cache=cache,
        )  # fmt: skip
        holder.append(Harness(store, runner, model, redis))
        try:
            await asyncio.wait_for(scenario(holder[0]), timeout=20)
        finally:
            await cache.close()
            await batcher.stop()

    asyncio.run(main())
    return holder[0]


def test_a_repeat_is_a_hit_without_decode_or_model_and_names_the_first_job() -> None:
    async def scenario(h: Harness) -> None:
        first = await h.add()
        assert await h.runner.run(first.id) is JobStatus.SUCCEEDED
        second = await h.add()
        assert await h.runner.run(second.id) is JobStatus.SUCCEEDED
        one, two = await h.job(first.id), await h.job(second.id)
        assert (one.cache, one.cached_from) == ("miss", None)
        assert (two.cache, two.cached_from, two.caption) == ("hit", first.id, one.caption)
        assert two.timings.batch_id is None and two.timings.generate_s is None
        assert len(h.prepared) == 1 and h.model.batches == [1]

    run(scenario)


def test_identical_jobs_together_are_captioned_once() -> None:
    async def scenario(h: Harness) -> None:
        jobs = [await h.add() for _ in range(5)]
        statuses = await asyncio.gather(*(h.runner.run(job.id) for job in jobs))
        assert statuses == [JobStatus.SUCCEEDED] * 5
        done = [await h.job(job.id) for job in jobs]
        assert sorted(job.cache or "" for job in done) == ["hit"] * 4 + ["miss"]
        producer = next(job.id for job in done if job.cache == "miss")
        assert {job.cached_from for job in done if job.cache == "hit"} == {producer}
        assert h.model.batches == [1] and len(h.prepared) == 1
        assert await h.redis.hget(KEYS.cache_stats(), "deduplicated") == b"4"

    run(scenario)


def test_a_job_that_opts_out_is_captioned_and_says_off() -> None:
    async def scenario(h: Harness) -> None:
        first = await h.add()
        await h.runner.run(first.id)
        again = await h.add(use_cache=False)
        await h.runner.run(again.id)
        assert (await h.job(again.id)).cache == "off"
        assert h.model.batches == [1, 1]

    run(scenario)


def test_a_deployment_with_the_cache_off_captions_every_repeat() -> None:
    async def scenario(h: Harness) -> None:
        for _ in range(2):
            job = await h.add()
            await h.runner.run(job.id)
            assert (await h.job(job.id)).cache == "off"
        assert h.model.batches == [1, 1]
        assert await h.redis.exists(KEYS.cache_stats()) == 0

    run(scenario, cache_enabled=False)


def test_another_key_misses_the_same_image() -> None:
    async def scenario(h: Harness) -> None:
        mine = await h.add(owner="alice")
        await h.runner.run(mine.id)
        theirs = await h.add(owner="mallory")
        await h.runner.run(theirs.id)
        assert (await h.job(theirs.id)).cache == "miss"
        assert h.model.batches == [1, 1]

    run(scenario)


def test_a_shared_cache_hit_never_shows_another_keys_job() -> None:
    async def scenario(h: Harness) -> None:
        mine = await h.add(owner="alice")
        await h.runner.run(mine.id)
        theirs = await h.add(owner="mallory")
        await h.runner.run(theirs.id)
        done = await h.job(theirs.id)
        assert (done.cache, done.cached_from) == ("hit", None)

    run(scenario, cache_shared=True)


def test_an_input_error_is_cached_briefly_and_fails_the_repeat_the_same_way() -> None:
    async def scenario(h: Harness) -> None:
        first = await h.add("http://img.test/garbage.gif")
        assert await h.runner.run(first.id) is JobStatus.FAILED
        second = await h.add("http://img.test/garbage.gif")
        assert await h.runner.run(second.id) is JobStatus.FAILED
        one, two = await h.job(first.id), await h.job(second.id)
        assert one.error is not None and two.error is not None
        assert one.error.code == two.error.code == "image_corrupt"
        assert (two.cache, two.cached_from) == ("hit", first.id)
        assert len(h.prepared) == 1
        digest = await h.redis.zrange(KEYS.cache_lru(), 0, -1)
        ttl = await h.redis.ttl(KEYS.cache_entry(digest[0].decode()))
        assert 0 < ttl <= 30

    run(scenario, cache_error_ttl_s=30)


def test_a_failure_that_is_not_the_images_fault_is_not_cached() -> None:
    async def scenario(h: Harness) -> None:
        h.model.fail_on = lambda image: True
        first = await h.add()
        assert await h.runner.run(first.id) is JobStatus.FAILED
        assert await h.redis.zcard(KEYS.cache_lru()) == 0
        assert [key async for key in h.redis.scan_iter(KEYS.cache_lease("*"))] == []
        h.model.fail_on = None
        second = await h.add()
        assert await h.runner.run(second.id) is JobStatus.SUCCEEDED
        assert (await h.job(second.id)).cache == "miss"

    run(scenario)


def test_a_cached_error_is_raised_as_its_own_class() -> None:
    entry = Entry(job_id="job_a", owner_tag="o", error_code="not_an_image", error_message="nope")
    claim = Claim(None, "job_b", "o", "hit", entry, "job_a")
    with pytest.raises(NotAnImage) as raised:
        claim.hit_caption()
    assert raised.value.extra == {"cache": "hit", "cached_from": "job_a"}


def test_the_caption_is_the_models() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add("http://img.test/blue.png")
        await h.runner.run(job.id)
        assert (await h.job(job.id)).caption == fake_caption(Image.open(io.BytesIO(png((20, 20, 200)))))

    run(scenario)


# --- fresh URLs: repeats without a download ----------------------------------------------


def test_a_repeat_of_a_fresh_url_is_a_hit_without_a_download_ending_from_the_queue() -> None:
    async def scenario(h: Harness) -> None:
        h.fresh_s["red"] = 600
        first = await h.add()
        await h.runner.run(first.id)
        second = await h.add()
        assert await h.runner.run(second.id) is JobStatus.SUCCEEDED
        done = await h.job(second.id)
        assert (done.cache, done.cached_from, done.caption) == ("hit", first.id, (await h.job(first.id)).caption)
        assert h.fetched == ["http://img.test/red.png"] and h.model.batches == [1]
        assert await h.redis.hget(KEYS.cache_stats(), "fresh_url_hits") == b"1"
        # One status change and one event: no running, no delivery counted.
        assert [status for job_id, status in h.events if job_id == second.id] == [JobStatus.SUCCEEDED]
        assert [status for job_id, status in h.events if job_id == first.id] == [JobStatus.RUNNING, JobStatus.SUCCEEDED]
        assert done.attempts == 0 and done.stage is None
        assert done.started_at is not None and done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at
        assert done.timings.queue_wait_s is not None and done.timings.fetch_s is not None
        counts = await h.redis.hgetall(KEYS.job_counts())
        assert [counts[name] for name in (b"entered:running", b"entered:succeeded", b"current:queued")] == [
            b"1", b"2", b"0"
        ]  # fmt: skip

    run(scenario)


def test_a_fresh_urls_repeat_past_its_deadline_expires_and_one_found_running_runs_again() -> None:
    async def scenario(h: Harness) -> None:
        h.fresh_s["red"] = 600
        await h.runner.run((await h.add()).id)
        late = await h.add(deadline_at=utc_now() - timedelta(seconds=1))
        assert await h.runner.run(late.id) is JobStatus.EXPIRED
        # A delivery found running (its worker died) runs as it is, alone: downloaded again, not ended from the queue.
        redelivered = await h.add()
        assert await h.store.transition(redelivered.id, JobStatus.RUNNING, started_at=utc_now())
        assert await h.runner.run(redelivered.id) is JobStatus.SUCCEEDED
        done = await h.job(redelivered.id)
        assert done.attempts == 2 and done.cache == "hit" and len(h.fetched) == 2

    run(scenario)


def test_a_url_its_server_promises_nothing_for_is_downloaded_every_time() -> None:
    async def scenario(h: Harness) -> None:
        for _ in range(3):
            await h.runner.run((await h.add()).id)
        assert len(h.fetched) == 3 and h.model.batches == [1]  # hits by their bytes, each downloaded
        assert await h.redis.hget(KEYS.cache_stats(), "fresh_url_hits") is None

    run(scenario)


def test_a_url_downloaded_again_after_its_freshness_reads_the_new_image() -> None:
    async def scenario(h: Harness) -> None:
        await h.runner.run((await h.add()).id)
        h.replaced["red"] = png((20, 200, 20))  # the site changed the image and said nothing of freshness
        changed = await h.add()
        await h.runner.run(changed.id)
        done = await h.job(changed.id)
        assert done.cache == "miss" and done.caption == fake_caption(Image.new("RGB", (40, 30), (20, 200, 20)))

    run(scenario)


def test_a_hit_by_bytes_links_a_fresh_url_too() -> None:
    async def scenario(h: Harness) -> None:
        await h.runner.run((await h.add("http://img.test/red.png")).id)
        h.fresh_s["red"] = 600
        await h.runner.run((await h.add("http://img.test/red.png")).id)  # a hit by its bytes, now linked
        third = await h.add("http://img.test/red.png")
        await h.runner.run(third.id)
        assert len(h.fetched) == 2 and (await h.job(third.id)).cache == "hit"

    run(scenario)


@pytest.mark.parametrize(
    ("second", "settings"),
    [
        ({"owner": "mallory"}, {}),
        ({"use_cache": False}, {}),
        ({"prompt": "a photo of"}, {}),
        ({}, {"cache_fresh_urls": False}),
    ],
    ids=["another key", "opted out", "another prompt", "deployment turned it off"],
)
def test_a_fresh_url_is_downloaded_again_for_another_key_option_or_opt_out(
    second: dict[str, Any], settings: dict[str, Any]
) -> None:
    async def scenario(h: Harness) -> None:
        h.fresh_s["red"] = 600
        await h.runner.run((await h.add()).id)
        again = await h.add(**second)
        assert await h.runner.run(again.id) is JobStatus.SUCCEEDED
        assert len(h.fetched) == 2
        assert await h.redis.hget(KEYS.cache_stats(), "fresh_url_hits") is None

    run(scenario, **settings)


def test_a_fresh_url_that_served_garbage_fails_again_without_a_download() -> None:
    async def scenario(h: Harness) -> None:
        h.fresh_s["garbage"] = 600
        first = await h.add("http://img.test/garbage.gif")
        await h.runner.run(first.id)
        second = await h.add("http://img.test/garbage.gif")
        assert await h.runner.run(second.id) is JobStatus.FAILED
        done = await h.job(second.id)
        assert done.error is not None and done.error.code == "image_corrupt" and done.cache == "hit"
        assert len(h.fetched) == 1
        assert done.attempts == 0 and [s for j, s in h.events if j == second.id] == [JobStatus.FAILED]
        # The link lives no longer than the cached error it names, not the 600 s its server allowed.
        links = [name async for name in h.redis.scan_iter(KEYS.cache_entry("u:*"))]
        assert len(links) == 1 and 0 < await h.redis.pttl(links[0]) <= 30_000

    run(scenario, cache_error_ttl_s=30)
