"""Admission: a request becomes one stored, queued job, or a typed refusal that leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakeredis.aioredis import FakeRedis
from PIL import Image

from api.admission import Admission, Door, owner_shares
from shared.errors import (
    IdempotencyConflict,
    InvalidRequest,
    NotAnImage,
    QueueFull,
    QueueUnavailable,
    UrlNotAllowed,
)
from shared.jobs.model import JobCreate, JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.fakes import FakeQueue

OWNER = "key_0123456789abcdef"
URL = "https://example.com/a.png"

Scenario = Callable[[Admission, FakeQueue], Awaitable[None]]


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"key_prefix": "captionizer-test", "max_prompt_chars": 20, "max_new_tokens_limit": 40}
    return Settings(**{**values, **overrides})


def run(scenario: Scenario, *, settings: Settings | None = None, fail: bool = False) -> None:
    async def main() -> None:
        redis = FakeRedis()
        chosen = settings or _settings()
        queue = FakeQueue(fail=fail)
        store = JobStore(redis, Keys(chosen.key_prefix), chosen.job_ttl_s)
        try:
            await scenario(Admission(chosen, store, queue), queue)  # type: ignore[arg-type]
        finally:
            await redis.aclose()

    asyncio.run(main())


def _png_base64() -> str:
    out = io.BytesIO()
    Image.new("RGB", (4, 4)).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_a_url_request_is_stored_then_queued_with_the_default_length() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        job = await submitter.admit_job(JobCreate(image_url=URL, prompt="a photo of"), OWNER, Door.JOB)
        assert queue.queued == [job.id]
        stored = await submitter.store.get(job.id)
        assert stored is not None and stored.status is JobStatus.QUEUED and stored.owner == OWNER
        assert (stored.prompt, stored.max_new_tokens) == ("a photo of", submitter.settings.default_max_new_tokens)

    run(scenario)


def test_a_base64_image_is_decoded_and_kept_as_the_jobs_upload() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        encoded = _png_base64()
        job = await submitter.admit_job(JobCreate(image_base64=encoded), OWNER, Door.JOB)
        assert job.source == "upload"
        assert await submitter.store.read_upload(job.id) == base64.b64decode(encoded)

    run(scenario)


@pytest.mark.parametrize(
    ("request_body", "error"),
    [
        ({}, InvalidRequest),
        ({"image_url": URL, "image_base64": "aGVsbG8="}, InvalidRequest),
        ({"image_url": URL, "prompt": "p" * 21}, InvalidRequest),
        ({"image_url": URL, "max_new_tokens": 41}, InvalidRequest),
        ({"image_url": "http://169.254.169.254/latest/meta-data"}, UrlNotAllowed),
        ({"image_url": URL, "webhook_url": "http://10.0.0.1/hook"}, UrlNotAllowed),
        ({"image_base64": base64.b64encode(b"not an image at all").decode()}, NotAnImage),
    ],
    ids=["no image", "two images", "long prompt", "too many tokens", "metadata url", "private webhook", "not image"],
)
def test_a_refused_request_stores_and_queues_nothing(request_body: dict[str, Any], error: type[Exception]) -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        with pytest.raises(error):
            await submitter.admit_job(JobCreate(**request_body), OWNER, Door.JOB)
        assert queue.queued == []
        assert await submitter.store.redis.keys("*") == []

    run(scenario)


def test_a_blank_prompt_is_no_prompt_and_a_deadline_is_dated_from_creation() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        job = await submitter.admit_job(JobCreate(image_url=URL, prompt="   ", deadline_s=30), OWNER, Door.JOB)
        assert job.prompt is None
        assert job.deadline_at is not None and (job.deadline_at - job.created_at).total_seconds() == 30

    run(scenario)


def test_a_job_the_broker_refuses_is_recorded_failed_with_the_reason() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        with pytest.raises(QueueUnavailable):
            await submitter.admit_job(JobCreate(image_url=URL), OWNER, Door.JOB)
        [key] = await submitter.store.redis.keys(submitter.store.keys.job("*"))
        job = await submitter.store.get(key.decode().rsplit(":", 1)[-1])
        assert job is not None and job.status is JobStatus.FAILED
        assert job.error is not None and job.error.code == "queue_unavailable"

    run(scenario, fail=True)


def test_a_full_queue_is_refused_before_anything_is_stored() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        await submitter.store.redis.rpush(submitter.store.keys.caption_queue(), "a", "b")
        with pytest.raises(QueueFull) as refused:
            await submitter.admit_job(JobCreate(image_url=URL), OWNER, Door.JOB)
        assert refused.value.extra["retry_after_s"] == 10
        assert queue.queued == []

    run(scenario, settings=_settings(max_queue_depth=2))


def test_the_same_idempotency_key_and_body_make_one_job() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        first = await submitter.admit_job(JobCreate(image_url=URL), OWNER, Door.JOB, idempotency_key="k-1")
        again = await submitter.admit_job(JobCreate(image_url=URL), OWNER, Door.JOB, idempotency_key="k-1")
        assert again.id == first.id and queue.queued == [first.id]
        with pytest.raises(IdempotencyConflict):
            await submitter.admit_job(JobCreate(image_url=URL, prompt="other"), OWNER, Door.JOB, idempotency_key="k-1")
        # Keys are per owner: another owner's same key is a new job.
        other = await submitter.admit_job(
            JobCreate(image_url=URL), "key_fedcba9876543210", Door.JOB, idempotency_key="k-1"
        )
        assert other.id != first.id

    run(scenario)


def test_a_key_whose_job_was_never_accepted_can_be_retried() -> None:
    async def scenario(submitter: Admission, queue: FakeQueue) -> None:
        queue.fail = True
        with pytest.raises(QueueUnavailable):
            await submitter.admit_job(JobCreate(image_url=URL), OWNER, Door.JOB, idempotency_key="k-2")
        queue.fail = False
        job = await submitter.admit_job(JobCreate(image_url=URL), OWNER, Door.JOB, idempotency_key="k-2")
        assert queue.queued == [job.id]

    run(scenario)


@pytest.mark.parametrize(
    ("overrides", "queued", "owner_bytes"),
    [
        ({}, 2_500, 268_435_456),
        ({"max_queue_depth": 3, "owner_queue_share": 0.1}, 1, 268_435_456),
        ({"max_pending_upload_bytes": 10_000, "owner_upload_share": 0.5}, 2_500, 5_000),
    ],
    ids=["defaults", "at least one job", "upload share"],
)
def test_owner_shares_follow_the_settings(overrides: dict[str, Any], queued: int, owner_bytes: int) -> None:
    shares = owner_shares(_settings(**overrides))
    assert (shares.max_queued_jobs, shares.max_upload_bytes) == (queued, owner_bytes)
