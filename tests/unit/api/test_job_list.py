"""GET /v1/jobs on a real redis-server: newest first, cursor pages, status filter, tenant isolation, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.http.auth import hash_key, owner_of
from api.jobs.listing import MAX_SCANNED, decode_cursor, encode_cursor
from shared.jobs.model import JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.unit.api.conftest import MakeApiSettings

KEY_A = "cap_listing-owner-a-0123456789abcdefghijklmnopqrst"
KEY_B = "cap_listing-owner-b-0123456789abcdefghijklmnopqrst"
PREFIX = "captionizer-listing"
Step = Callable[[httpx.AsyncClient, JobStore], Any]


@pytest.fixture
def settings(fresh_redis_url: str, make_api_settings: MakeApiSettings) -> Settings:
    return make_api_settings(
        keys=[KEY_A, KEY_B], redis_url=fresh_redis_url, key_prefix=PREFIX, rate_limit_reads_per_minute=0
    )


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run(settings: Settings, step: Step) -> Any:
    """Run ``step(client, store)`` against a fresh app inside its lifespan."""

    async def go() -> Any:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await step(client, app.state.services.store)

    return asyncio.run(go())


async def submit(client: httpx.AsyncClient, n: int, key: str = KEY_A) -> list[str]:
    ids = []
    for i in range(n):
        response = await client.post("/v1/jobs", json={"image_url": f"https://example.com/{i}.png"}, headers=auth(key))
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def all_pages(client: httpx.AsyncClient, key: str = KEY_A, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/jobs", params=query, headers=auth(key))
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([job["id"] for job in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


def test_submitting_writes_the_owners_index(settings: Settings) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        (job_id,) = await submit(client, 1)
        index = Keys(PREFIX).owner_jobs(owner_of(hash_key(KEY_A)))
        job = await store.get(job_id)
        assert job is not None
        assert await store.redis.zscore(index, job_id) == pytest.approx(job.created_at.timestamp())
        assert 0 < await store.redis.ttl(index) <= settings.job_ttl_s

    run(settings, step)


def test_jobs_are_listed_newest_first_in_cursor_pages(settings: Settings) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        ids = await submit(client, 5)
        pages = await all_pages(client, limit=2)
        assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
        # A job submitted after the first page does not shift the later pages.
        first = (await client.get("/v1/jobs", params={"limit": 2}, headers=auth())).json()
        (newer,) = await submit(client, 1)
        second = await client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth())
        assert [job["id"] for job in second.json()["items"]] == ids[2:0:-1]
        assert (await all_pages(client, limit=100)) == [[newer, *ids[::-1]]]

    run(settings, step)


def test_jobs_created_in_the_same_instant_are_neither_lost_nor_repeated(settings: Settings) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        ids = await submit(client, 4)
        index = Keys(PREFIX).owner_jobs(owner_of(hash_key(KEY_A)))
        await store.redis.zadd(index, dict.fromkeys(ids, 1_800_000_000.25))  # all four tie on the score
        pages = await all_pages(client, limit=1)
        assert sorted(job_id for page in pages for job_id in page) == sorted(ids)
        assert all(len(page) == 1 for page in pages)

    run(settings, step)


def test_status_filter_lists_only_jobs_in_that_status(settings: Settings) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        ids = await submit(client, 6)
        for job_id in ids[1::2]:
            assert await store.transition(job_id, JobStatus.CANCELED)
        assert await all_pages(client, status="canceled", limit=2) == [ids[5:2:-2], ids[1:2]]
        assert await all_pages(client, status="queued") == [ids[4::-2]]
        assert await all_pages(client, status="succeeded") == [[]]

    run(settings, step)


def test_a_status_filter_scans_a_bounded_stretch_per_request(settings: Settings) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        (job_id,) = await submit(client, 1)
        # Index entries whose records are gone: a filter must not walk them all in one request.
        index = Keys(PREFIX).owner_jobs(owner_of(hash_key(KEY_A)))
        job = await store.get(job_id)
        assert job is not None
        ghosts = {f"job_ghost{i:018d}": job.created_at.timestamp() + 1 + i for i in range(MAX_SCANNED + 50)}
        await store.redis.zadd(index, ghosts)
        body = (await client.get("/v1/jobs", params={"status": "queued"}, headers=auth())).json()
        assert body["items"] == [] and body["next_cursor"] is not None
        assert await store.redis.zcard(index) == 51  # the expired entries it walked were dropped
        follow = await client.get(
            "/v1/jobs", params={"status": "queued", "cursor": body["next_cursor"]}, headers=auth()
        )
        assert [j["id"] for j in follow.json()["items"]] == [job_id] and follow.json()["next_cursor"] is None

    run(settings, step)


def test_a_caller_lists_only_its_own_jobs(settings: Settings) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        own = await submit(client, 3, KEY_A)
        theirs = await submit(client, 2, KEY_B)
        assert await all_pages(client, KEY_A) == [own[::-1]]
        assert await all_pages(client, KEY_B) == [theirs[::-1]]
        # A cursor is only a position: B following A's cursor still sees only B's jobs.
        a_page = (await client.get("/v1/jobs", params={"limit": 1}, headers=auth(KEY_A))).json()
        b_page = await client.get("/v1/jobs", params={"cursor": a_page["next_cursor"]}, headers=auth(KEY_B))
        assert {job["owner"] for job in b_page.json()["items"]} <= {owner_of(hash_key(KEY_B))}
        assert not set(job["id"] for job in b_page.json()["items"]) & set(own)
        assert (await client.get("/v1/jobs")).status_code == 401

    run(settings, step)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"status": "finished"},
        {"cursor": "not-a-cursor"},
        {"cursor": "%%%"},
        {"cursor": encode_cursor(1.0, "bob_x")},
        {"cursor": "x" * 201},
    ],
)
def test_bad_list_parameters_are_invalid_requests(settings: Settings, params: dict[str, Any]) -> None:
    async def step(client: httpx.AsyncClient, store: JobStore) -> None:
        response = await client.get("/v1/jobs", params=params, headers=auth())
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_request"

    run(settings, step)


def test_cursors_round_trip_and_reject_nan() -> None:
    assert decode_cursor(encode_cursor(1764412000.123456, "job_abc")) == (1764412000.123456, "job_abc")
    with pytest.raises(Exception, match="cursor"):
        decode_cursor(encode_cursor(float("nan"), "job_abc"))
