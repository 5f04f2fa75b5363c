"""GET /caption?url=: the blog's contract (a JSON string), its errors, and the 504 that points at the job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from shared.jobs.model import JobErrorInfo, JobStatus
from shared.jobs.store import JobStore
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness, MakeApiSettings

Worker = Callable[[JobStore, str], Awaitable[None]]


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    return make_api_settings(caption_wait_s=0.5)


def caption_with(api_harness: ApiHarness, url: str, worker: Worker) -> httpx.Response:
    """GET /caption while ``worker`` plays the worker's part on the job it queued."""

    async def scenario() -> httpx.Response:
        app = api_harness.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                request = asyncio.create_task(http.get("/caption", params={"url": url}))
                deadline = time.monotonic() + 30
                while not api_harness.queue.queued and not request.done():
                    assert time.monotonic() < deadline, "the job was never queued"
                    await asyncio.sleep(0.001)
                if api_harness.queue.queued:
                    await worker(api_harness.store(), api_harness.queue.queued[0])
                return await request

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_the_caption_comes_back_as_a_json_string(api_harness: ApiHarness) -> None:
    async def succeed(store: JobStore, job_id: str) -> None:
        assert await store.transition(job_id, JobStatus.RUNNING)
        assert await store.transition(job_id, JobStatus.SUCCEEDED, caption="a large red circle")

    response = caption_with(api_harness, "https://example.com/red.png", succeed)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == "a large red circle"


def test_a_failed_job_answers_with_its_own_error(api_harness: ApiHarness) -> None:
    async def fail(store: JobStore, job_id: str) -> None:
        assert await store.transition(job_id, JobStatus.RUNNING)
        error = JobErrorInfo(code="fetch_failed", message="the image server answered 404", upstream_status=404)
        assert await store.transition(job_id, JobStatus.FAILED, error=error)

    response = caption_with(api_harness, "https://example.com/gone.png", fail)
    assert response.status_code == 502
    problem = response.json()
    assert (problem["code"], problem["upstream_status"]) == ("fetch_failed", 404)
    assert problem["job_id"] == api_harness.queue.queued[0]


def test_a_job_still_running_after_the_wait_answers_504_with_its_url(api_harness: ApiHarness) -> None:
    async def start_only(store: JobStore, job_id: str) -> None:
        assert await store.transition(job_id, JobStatus.RUNNING)

    response = caption_with(api_harness, "https://example.com/slow.png", start_only)
    assert response.status_code == 504
    problem = response.json()
    job_id = api_harness.queue.queued[0]
    assert problem["code"] == "wait_timeout"
    assert problem["job_id"] == job_id and problem["job_url"] == f"/v1/jobs/{job_id}"


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "http://127.0.0.1:6379/", "not a url"])
def test_a_bad_url_is_400_url_not_allowed(client: TestClient, api_harness: ApiHarness, url: str) -> None:
    response = client.get("/caption", params={"url": url})
    assert response.status_code == 400
    assert response.json()["code"] == "url_not_allowed"
    assert api_harness.queue.queued == []
