"""Fair shares: one key cannot take the whole queue or the upload budget; the others are still served.

Against a real redis-server (the admission is a Lua script), through the whole app.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from PIL import Image
from redis.asyncio import Redis

from api.app import create_app
from api.http.auth import hash_key, owner_of
from shared.jobs.model import JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.unit.api.conftest import build_api_settings

KEY_A = "cap_shares-owner-a-0123456789abcdefghijklmnopqrstu"
KEY_B = "cap_shares-owner-b-0123456789abcdefghijklmnopqrstu"
PREFIX = "captionizer-shares"
URL_JOB = {"image_url": "https://example.com/a.png"}

Scenario = Callable[[httpx.AsyncClient, JobStore], Awaitable[None]]


def _settings(redis_url: str, **overrides: Any) -> Settings:
    # Four jobs per key, sixteen in all.
    values: dict[str, Any] = {"key_prefix": PREFIX, "max_queue_depth": 16, "owner_queue_share": 0.25}
    return build_api_settings(keys=[KEY_A, KEY_B], redis_url=redis_url, **{**values, **overrides})


@asynccontextmanager
async def _app(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, JobStore]]:
    redis = Redis.from_url(settings.redis_url)
    await redis.flushdb()
    app = create_app(settings)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client, JobStore(redis, Keys(PREFIX), settings.job_ttl_s)
    finally:
        await redis.flushdb()
        await redis.aclose()


def run(settings: Settings, scenario: Scenario) -> None:
    async def main() -> None:
        async with _app(settings) as (client, store):
            await scenario(client, store)

    asyncio.run(asyncio.wait_for(main(), 60))


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _png_base64(side: int) -> str:
    out = io.BytesIO()
    # Noise does not compress, so the upload's size is about side * side * 3 bytes.
    Image.frombytes("RGB", (side, side), bytes((i * 7919) % 251 for i in range(side * side * 3))).save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def _assert_over_share(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "owner_quota_exceeded"
    assert response.headers["retry-after"] == "10"


def test_a_greedy_key_is_refused_while_another_is_still_served(redis_server_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, store: JobStore) -> None:
        for _ in range(4):
            assert (await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A))).status_code == 202
        _assert_over_share(await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A)))
        assert (await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_B))).status_code == 202
        # The refusal stored and queued nothing: 4 of A's jobs and B's one.
        assert await store.redis.hget(store.keys.owner_queued_jobs(), owner_of(hash_key(KEY_A))) == b"4"
        assert await store.redis.llen(store.keys.caption_queue()) == 5

    run(_settings(redis_server_url), scenario)


def test_a_job_that_starts_gives_its_slot_back(redis_server_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, store: JobStore) -> None:
        ids = [(await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A))).json()["id"] for _ in range(4)]
        _assert_over_share(await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A)))
        assert await store.transition(ids[0], JobStatus.RUNNING)
        assert (await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A))).status_code == 202
        # A redelivery (running -> running) and the end give nothing back twice.
        assert await store.transition(ids[0], JobStatus.RUNNING)
        assert await store.transition(ids[0], JobStatus.SUCCEEDED, caption="x")
        _assert_over_share(await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A)))
        canceled = await client.post(f"/v1/jobs/{ids[1]}/cancel", headers=_as(KEY_A))
        assert canceled.json()["status"] == "canceled"
        assert (await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A))).status_code == 202

    run(_settings(redis_server_url), scenario)


def test_concurrent_requests_of_one_key_never_pass_its_share_together(redis_server_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, store: JobStore) -> None:
        answers = await asyncio.gather(*(client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A)) for _ in range(20)))
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [202] * 4 + [429] * 16

    run(_settings(redis_server_url), scenario)


def test_pending_upload_bytes_are_shared_and_given_back_when_the_job_ends(redis_server_url: str) -> None:
    image = _png_base64(64)  # about 12 kB of PNG
    upload = {"image_base64": image}
    # Each key may keep about 2.5 uploads waiting; the queue share is not the limit here.
    size = len(base64.b64decode(image))
    settings = _settings(
        redis_url=redis_server_url, max_pending_upload_bytes=10 * size, owner_upload_share=0.25, owner_queue_share=1
    )

    async def scenario(client: httpx.AsyncClient, store: JobStore) -> None:
        first = (await client.post("/v1/jobs", json=upload, headers=_as(KEY_A))).json()["id"]
        assert (await client.post("/v1/jobs", json=upload, headers=_as(KEY_A))).status_code == 202
        _assert_over_share(await client.post("/v1/jobs", json=upload, headers=_as(KEY_A)))
        # A URL job holds no upload bytes, and the other key has its own share.
        assert (await client.post("/v1/jobs", json=URL_JOB, headers=_as(KEY_A))).status_code == 202
        assert (await client.post("/v1/jobs", json=upload, headers=_as(KEY_B))).status_code == 202
        # Running still holds the bytes (the worker reads them); the end gives them back.
        assert await store.transition(first, JobStatus.RUNNING)
        _assert_over_share(await client.post("/v1/jobs", json=upload, headers=_as(KEY_A)))
        assert await store.transition(first, JobStatus.FAILED, error={"code": "internal_error", "message": "x"})
        assert (await client.post("/v1/jobs", json=upload, headers=_as(KEY_A))).status_code == 202
        assert int(await store.redis.hget(store.keys.owner_upload_bytes(), "*")) == 3 * size

    run(settings, scenario)


def test_the_total_upload_budget_answers_queue_full_for_everyone(redis_server_url: str) -> None:
    image = _png_base64(64)
    size = len(base64.b64decode(image))
    settings = _settings(redis_url=redis_server_url, max_pending_upload_bytes=2 * size, owner_upload_share=1)

    async def scenario(client: httpx.AsyncClient, store: JobStore) -> None:
        assert (await client.post("/v1/jobs", json={"image_base64": image}, headers=_as(KEY_A))).status_code == 202
        assert (await client.post("/v1/jobs", json={"image_base64": image}, headers=_as(KEY_B))).status_code == 202
        full = await client.post("/v1/jobs", json={"image_base64": image}, headers=_as(KEY_B))
        assert (full.status_code, full.json()["code"]) == (503, "queue_full")
        assert full.headers["retry-after"] == "10"

    run(settings, scenario)
