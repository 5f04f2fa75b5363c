"""Admission: past max_queue_depth waiting tasks, POST answers 503 queue_full with Retry-After."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from shared.jobs.shares import QUEUE_FULL_RETRY_AFTER_S
from shared.keys import Keys
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"max_queue_depth": 3})


def fill_queue(api_harness: ApiHarness, tasks: int) -> None:
    async def push() -> None:
        await api_harness.redis().rpush(Keys(api_harness.settings.key_prefix).caption_queue(), *["task"] * tasks)

    asyncio.run(push())


def test_a_full_queue_refuses_new_jobs_with_retry_after(client: TestClient, api_harness: ApiHarness) -> None:
    fill_queue(api_harness, 3)
    response = client.post("/v1/jobs", json={"image_url": "https://example.com/cat.jpg"})
    assert response.status_code == 503
    assert response.json()["code"] == "queue_full"
    assert response.headers["retry-after"] == str(QUEUE_FULL_RETRY_AFTER_S)
    assert api_harness.queue.queued == []


def test_below_the_limit_jobs_are_accepted(client: TestClient, api_harness: ApiHarness) -> None:
    fill_queue(api_harness, 2)
    assert client.post("/v1/jobs", json={"image_url": "https://example.com/cat.jpg"}).status_code == 202


def test_an_idempotent_replay_is_answered_even_when_the_queue_is_full(
    client: TestClient, api_harness: ApiHarness
) -> None:
    headers = {"Idempotency-Key": "replay-me"}
    first = client.post("/v1/jobs", json={"image_url": "https://example.com/cat.jpg"}, headers=headers)
    fill_queue(api_harness, 3)
    again = client.post("/v1/jobs", json={"image_url": "https://example.com/cat.jpg"}, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
