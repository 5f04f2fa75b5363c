"""Polling never spends the submit budget; RateLimit headers on /v1 answers; Prefer: wait on POST /v1/jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.http.auth import hash_key
from api.http.prefer import preferred_wait_s
from shared.jobs.model import JobStatus
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness

KEY = "cap_polling-owner-0123456789abcdefghijklmnopqrstuvw"
AUTH = {"Authorization": f"Bearer {KEY}"}
URL_JOB = {"image_url": "https://example.com/a.png"}
Step = Callable[[httpx.AsyncClient], Any]


@pytest.fixture
def make_settings(fresh_redis_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "redis_url": fresh_redis_url,
            "key_prefix": "captionizer-polling",
            "api_key_hashes": [hash_key(KEY)],
        }
        return Settings(**{**values, **overrides})

    return make


def run(settings: Settings, step: Step) -> Any:
    async def go() -> Any:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await step(client)

    return asyncio.run(go())


def test_reading_and_long_polling_own_jobs_does_not_spend_the_submit_budget(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(rate_limit_per_minute=1, rate_limit_burst=2, max_wait_s=0.05)

    async def step(client: httpx.AsyncClient) -> None:
        first = await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)
        assert first.status_code == 202
        job_id = first.json()["id"]
        for _ in range(20):
            assert (await client.get(f"/v1/jobs/{job_id}", headers=AUTH)).status_code == 200
            assert (await client.get(f"/v1/jobs/{job_id}", params={"wait": 1}, headers=AUTH)).status_code == 200
            assert (await client.get("/v1/jobs", headers=AUTH)).status_code == 200
        # One token of the submit burst is left after 60 reads, and then it is spent.
        assert (await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)).status_code == 202
        refused = await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"

    run(settings, step)


def test_reads_have_a_bounded_budget_of_their_own(make_settings: Callable[..., Settings]) -> None:
    # One read a minute refills: no token comes back while the test runs, however slow the machine.
    settings = make_settings(rate_limit_reads_per_minute=1, rate_limit_reads_burst=3)

    async def step(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)).json()["id"]
        answers = [await client.get(f"/v1/jobs/{job_id}", headers=AUTH) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        states = [_rate_limit(a.headers["RateLimit"]) for a in answers]
        assert [(name, remaining) for name, remaining, _ in states] == [
            ("read", 2),
            ("read", 1),
            ("read", 0),
            ("read", 0),
        ]
        # t: seconds until the bucket is full again (60 s a token), then until the next read is allowed.
        assert [0 < t <= limit for (_, _, t), limit in zip(states, (60, 120, 180, 60), strict=True)] == [True] * 4
        limited = answers[-1]
        assert int(limited.headers["Retry-After"]) == states[-1][2]
        assert answers[0].headers["RateLimit-Policy"].endswith('"read";q=3;w=180')
        # Submitting is still possible: the read budget is a separate bucket.
        assert (await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)).status_code == 202

    run(settings, step)


def test_reading_a_batch_spends_the_read_budget_and_leaves_submitting_alone(
    make_settings: Callable[..., Settings],
) -> None:
    # Issue 22: the CLI polls a batch every second; polling must not lock the key out of submitting.
    settings = make_settings(
        rate_limit_per_minute=1, rate_limit_burst=2, rate_limit_reads_per_minute=1, rate_limit_reads_burst=3
    )

    async def step(client: httpx.AsyncClient) -> None:
        created = await client.post("/v1/batches", json={"items": [URL_JOB]}, headers=AUTH)
        assert created.status_code == 202, created.text
        batch_id = created.json()["id"]
        reads = [
            await client.get(f"/v1/batches/{batch_id}", headers=AUTH),
            await client.get(f"/v1/batches/{batch_id}/results", headers=AUTH),
            await client.get(f"/v1/batches/{batch_id}", headers=AUTH),
            await client.get(f"/v1/batches/{batch_id}", headers=AUTH),
        ]
        assert [r.status_code for r in reads] == [200, 200, 200, 429]
        assert [_rate_limit(r.headers["RateLimit"])[:2] for r in reads] == [
            ("read", 2),
            ("read", 1),
            ("read", 0),
            ("read", 0),
        ]
        # The submit burst still holds its second token: cancel is a change, on the submit budget.
        canceled = await client.post(f"/v1/batches/{batch_id}/cancel", headers=AUTH)
        assert canceled.status_code == 200 and _rate_limit(canceled.headers["RateLimit"])[:2] == ("submit", 0)

    run(settings, step)


def _rate_limit(value: str) -> tuple[str, int, int]:
    """``"read";r=2;t=60`` as ("read", 2, 60)."""
    name, *params = value.split(";")
    fields = dict(param.split("=", 1) for param in params)
    assert set(fields) == {"r", "t"}, value
    return name.strip('"'), int(fields["r"]), int(fields["t"])


def test_every_v1_answer_advertises_the_policies(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(rate_limit_per_minute=120, rate_limit_burst=60)
    policy = '"submit";q=60;w=30, "read";q=120;w=12'

    async def step(client: httpx.AsyncClient) -> None:
        created = await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)
        assert created.headers["RateLimit-Policy"] == policy
        assert created.headers["RateLimit"] == '"submit";r=59;t=1'
        listed = await client.get("/v1/jobs", headers=AUTH)
        assert listed.headers["RateLimit"] == '"read";r=119;t=1'
        for answer in (
            await client.get("/v1/jobs"),  # 401: no bucket was spent, the policy is still advertised
            await client.get("/v1/nothing", headers=AUTH),
            await client.get("/v1/limits"),
            await client.post("/v1/jobs", content=b"x", headers={**AUTH, "content-type": "text/plain"}),
        ):
            assert answer.headers["RateLimit-Policy"] == policy, answer.status_code
        assert "RateLimit-Policy" not in (await client.get("/healthz")).headers

    run(settings, step)


def test_no_rate_limit_headers_when_limiting_is_off(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(rate_limit_per_minute=0, rate_limit_reads_per_minute=0)

    async def step(client: httpx.AsyncClient) -> None:
        answer = await client.post("/v1/jobs", json=URL_JOB, headers=AUTH)
        assert "RateLimit" not in answer.headers and "RateLimit-Policy" not in answer.headers

    run(settings, step)


# --- Prefer: wait (RFC 7240) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["wait=10"], 10.0),
        (["respond-async, wait=5"], 5.0),
        (["WAIT = 7 ; x=1"], 7.0),
        (['wait="3"'], 3.0),
        (["return=minimal", "wait=2"], 2.0),
        (["wait=1, wait=9"], 1.0),
        (["wait=abc"], None),
        (["wait=-1"], None),
        (["wait=1.5"], None),
        (["wait=99999999999"], None),
        (["wait"], None),
        (["handling=lenient"], None),
        ([], None),
    ],
)
def test_prefer_wait_is_parsed_as_rfc_7240_says(values: list[str], expected: float | None) -> None:
    assert preferred_wait_s(values) == expected


def test_prefer_wait_answers_200_with_the_finished_job(api_harness: ApiHarness) -> None:
    async def scenario() -> None:
        app = api_harness.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                post = asyncio.create_task(http.post("/v1/jobs", json=URL_JOB, headers={"Prefer": "wait=5"}))
                job_id = await _queued_job_id(api_harness, post)
                await _until(lambda: job_id in app.state.services.job_events._waiters)
                store = api_harness.store()
                assert await store.transition(job_id, JobStatus.RUNNING)
                assert await store.transition(job_id, JobStatus.SUCCEEDED, caption="a red circle")
                response = await post
                assert response.status_code == 200
                assert response.json()["caption"] == "a red circle"
                assert response.headers["Preference-Applied"] == "wait=5"
                assert response.headers["Location"] == f"/v1/jobs/{job_id}"

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_prefer_wait_is_capped_by_max_wait_s_and_answers_202_if_still_queued(client: Any) -> None:
    started = time.monotonic()
    response = client.post("/v1/jobs", json=URL_JOB, headers={"Prefer": "wait=3600"})
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=5"  # api_settings.max_wait_s
    assert time.monotonic() - started >= 5


def test_a_malformed_or_absent_prefer_is_ignored(client: Any) -> None:
    for headers in ({}, {"Prefer": "wait=soon"}, {"Prefer": "respond-async"}):
        response = client.post("/v1/jobs", json=URL_JOB, headers=headers)
        assert response.status_code == 202
        assert "Preference-Applied" not in response.headers


async def _queued_job_id(harness: ApiHarness, pending: asyncio.Task[httpx.Response]) -> str:
    """The id of the job the pending POST queued (the fake queue records it before the wait begins)."""
    await _until(lambda: bool(harness.queue.queued) or pending.done())
    assert not pending.done(), pending.result().text
    return harness.queue.queued[-1]


async def _until(predicate: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)
