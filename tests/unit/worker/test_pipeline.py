"""JobRunner: the state machine of one delivery, recorded on the job, under duplicates, cancels and failures."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import fakeredis.aioredis
import pytest
from PIL import Image

from shared.errors import FetchFailed
from shared.jobs.model import Job, JobStatus, utc_now
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.fakes import FakeCaptioner, fake_caption
from worker.captioning.batching import Batcher
from worker.captioning.pipeline import JobRunner
from worker.intake.images import ImageBytes, decode_image

RED = Image.new("RGB", (40, 30), (220, 30, 30))


def png(image: Image.Image = RED) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@dataclass
class Harness:
    store: JobStore
    runner: JobRunner
    model: FakeCaptioner
    events: list[tuple[str, JobStatus]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)

    async def add(self, **fields: object) -> Job:
        job = Job(id=f"job_{len(self.fetched)}_{utc_now().timestamp()}", image_url="http://img.test/red.png")
        job = job.model_copy(update=fields)
        await self.store.create(job, upload=png() if job.source == "upload" else None)
        return job

    async def job(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        assert job is not None
        return job


def run(
    scenario: Callable[[Harness], Awaitable[None]],
    *,
    model: FakeCaptioner | None = None,
    max_batch_size: int = 4,
    max_wait_s: float = 0.005,
    **settings: object,
) -> Harness:
    settings_obj = Settings(key_prefix="t", **settings)  # type: ignore[arg-type]
    model = model or FakeCaptioner()
    holder: list[Harness] = []

    async def fetch(url: str) -> ImageBytes:
        holder[0].fetched.append(url)
        if "missing" in url:
            raise FetchFailed("the image server answered 404", upstream_status=404)
        if "garbage" in url:
            return ImageBytes.of(b"this is not an image")
        if "explode" in url:
            raise KeyError("a bug")
        if "hang" in url:
            await asyncio.Event().wait()
        return ImageBytes.of(png())

    async def main() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=600)
        batcher = Batcher(
            lambda images, prompt, limits: model.caption(list(images), prompt, max(limits)),
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
        )
        batcher.start()

        async def on_event(job: Job, status: JobStatus) -> None:
            holder[0].events.append((job.id, status))

        runner = JobRunner(
            settings_obj, store, batcher, fetch=fetch, prepare=lambda data: asyncio.to_thread(decode_image, data, settings_obj, model_input_px=model.input_size_px),
            model_name="fake", on_event=on_event, count_tokens=model.count_tokens,
        )  # fmt: skip
        holder.append(Harness(store, runner, model))
        try:
            await asyncio.wait_for(scenario(holder[0]), timeout=20)
        finally:
            await batcher.stop()

    asyncio.run(main())
    return holder[0]


def test_a_url_job_succeeds_with_caption_model_and_timings() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add()
        assert await h.runner.run(job.id) is JobStatus.SUCCEEDED
        done = await h.job(job.id)
        assert done.status is JobStatus.SUCCEEDED
        assert done.caption == fake_caption(RED)
        assert done.model == "fake"
        assert done.error is None and done.stage is None and done.attempts == 1
        assert done.started_at is not None and done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at
        timings = done.timings
        assert timings.batch_size == 1 and timings.batch_id is not None
        assert all(t is not None and t >= 0 for t in (timings.queue_wait_s, timings.fetch_s, timings.generate_s))
        assert timings.total_s is not None and timings.total_s >= timings.generate_s  # type: ignore[operator]
        assert h.events == [(job.id, JobStatus.RUNNING), (job.id, JobStatus.SUCCEEDED)]

    run(scenario)


def test_usage_counts_the_prompt_and_the_caption_with_the_models_tokenizer() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add(prompt="a photo of")
        assert await h.runner.run(job.id) is JobStatus.SUCCEEDED
        done = await h.job(job.id)
        assert done.caption is not None and done.usage is not None
        # FakeCaptioner's tokenizer counts words: the pipeline records what the model counts.
        assert done.usage.prompt_tokens == 3
        assert done.usage.completion_tokens == len(done.caption.split()) > 0

    run(scenario)


def test_an_upload_is_read_then_deleted() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add(source="upload", image_url=None)
        assert await h.runner.run(job.id) is JobStatus.SUCCEEDED
        assert (await h.job(job.id)).caption == fake_caption(RED)
        assert await h.store.read_upload(job.id) is None
        assert h.fetched == []

    run(scenario)


def test_an_expired_upload_fails_the_job_with_upload_expired() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add(source="upload", image_url=None)
        await h.store.delete_upload(job.id)
        assert await h.runner.run(job.id) is JobStatus.FAILED
        error = (await h.job(job.id)).error
        assert error is not None and error.code == "upload_expired"

    run(scenario)


@pytest.mark.parametrize(
    ("url", "code", "upstream_status"),
    [
        ("http://img.test/missing.png", "fetch_failed", 404),
        ("http://img.test/garbage.png", "not_an_image", None),
        ("http://img.test/explode.png", "internal_error", None),
    ],
)
def test_a_failure_is_recorded_on_the_job_with_its_code(url: str, code: str, upstream_status: int | None) -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add(image_url=url)
        assert await h.runner.run(job.id) is JobStatus.FAILED
        done = await h.job(job.id)
        assert done.status is JobStatus.FAILED and done.caption is None
        assert done.error is not None and done.error.code == code
        assert done.error.upstream_status == upstream_status
        assert done.finished_at is not None
        assert h.events[-1] == (job.id, JobStatus.FAILED)

    run(scenario)


def test_one_failing_job_leaves_the_others_in_its_batch_alone() -> None:
    async def scenario(h: Harness) -> None:
        good = [await h.add() for _ in range(3)]
        bad = await h.add(image_url="http://img.test/explode.png")
        statuses = await asyncio.gather(*(h.runner.run(job.id) for job in [*good, bad]))
        assert statuses == [JobStatus.SUCCEEDED] * 3 + [JobStatus.FAILED]
        assert {(await h.job(job.id)).timings.batch_size for job in good} == {3}

    # Only a full batch of the three good images can run: the bad one never reaches the batcher.
    run(scenario, max_batch_size=3, max_wait_s=3600)


def test_a_model_error_fails_only_the_image_that_caused_it() -> None:
    model = FakeCaptioner(fail_on=lambda image: image.width == 41)

    async def scenario(h: Harness) -> None:
        jobs = [await h.add() for _ in range(3)]
        original_fetch = h.runner.fetch

        async def fetch(url: str) -> ImageBytes:
            return (
                ImageBytes.of(png(Image.new("RGB", (41, 30)))) if url.endswith("odd.png") else await original_fetch(url)
            )

        h.runner.fetch = fetch
        odd = await h.add(image_url="http://img.test/odd.png")
        statuses = await asyncio.gather(*(h.runner.run(job.id) for job in [*jobs, odd]))
        assert statuses == [JobStatus.SUCCEEDED] * 3 + [JobStatus.FAILED]
        error = (await h.job(odd.id)).error
        assert error is not None and error.code == "internal_error"

    run(scenario, model=model)


def test_a_second_delivery_of_a_finished_job_changes_nothing() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add()
        await h.runner.run(job.id)
        before = await h.job(job.id)
        assert await h.runner.run(job.id) is None
        assert await h.job(job.id) == before
        assert len(h.fetched) == 1

    run(scenario)


def test_a_canceled_job_is_never_started() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add()
        assert await h.store.transition(job.id, JobStatus.CANCELED)
        assert await h.runner.run(job.id) is None
        assert (await h.job(job.id)).status is JobStatus.CANCELED
        assert h.fetched == [] and h.events == []

    run(scenario)


def test_a_job_canceled_while_running_keeps_its_canceled_status() -> None:
    model = FakeCaptioner(held=True)

    async def scenario(h: Harness) -> None:
        job = await h.add()
        task = asyncio.create_task(h.runner.run(job.id))
        await asyncio.to_thread(model.started.wait, 10)
        assert await h.store.transition(job.id, JobStatus.CANCELED)
        model.release()
        assert await task is None
        done = await h.job(job.id)
        assert done.status is JobStatus.CANCELED and done.caption is None

    run(scenario, model=model)


def test_a_job_past_its_deadline_expires_instead_of_running() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add(deadline_at=utc_now() - timedelta(seconds=1))
        assert await h.runner.run(job.id) is JobStatus.EXPIRED
        done = await h.job(job.id)
        assert done.status is JobStatus.EXPIRED and done.finished_at is not None
        assert h.fetched == []

    run(scenario)


def test_a_job_whose_worker_kept_dying_fails_with_worker_crashed() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add()
        # Two deliveries that died mid-job (each moved it to running).
        for _ in range(2):
            assert await h.store.transition(job.id, JobStatus.RUNNING)
        assert await h.runner.run(job.id) is JobStatus.FAILED
        error = (await h.job(job.id)).error
        assert error is not None and error.code == "worker_crashed"

    run(scenario, max_delivery_attempts=2)


@pytest.mark.timeout(30)
def test_a_job_past_its_time_limit_fails_with_job_timeout() -> None:
    async def scenario(h: Harness) -> None:
        job = await h.add(image_url="http://img.test/hang.png")
        assert await h.runner.run(job.id) is JobStatus.FAILED
        error = (await h.job(job.id)).error
        assert error is not None and error.code == "job_timeout"

    run(scenario, job_time_limit_s=1)


def test_a_key_on_a_hanging_host_holds_only_its_fetch_share_and_another_key_s_job_goes_on() -> None:
    async def scenario(h: Harness) -> None:
        greedy = [
            await h.add(id=f"job_greedy_{i}", owner="greedy", image_url=f"http://slow.test/hang-{i}.png")
            for i in range(5)
        ]
        runs = [asyncio.create_task(h.runner.run(job.id)) for job in greedy]
        while len(h.fetched) < 2:  # the loop runs each job up to its fetch
            await asyncio.sleep(0)
        polite = await h.add(id="job_polite", owner="polite")
        assert await h.runner.run(polite.id) is JobStatus.SUCCEEDED
        # Every greedy job is running, yet only its key's share of them is fetching; the rest wait their turn.
        assert {(await h.job(job.id)).status for job in greedy} == {JobStatus.RUNNING}
        assert len([url for url in h.fetched if "hang" in url]) == 2 and len(h.fetched) == 3
        assert h.runner.fetches.fetches_of("greedy") == 2
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        assert h.runner.fetches.fetches_of("greedy") == 0

    run(scenario, max_fetches_per_key=2)
