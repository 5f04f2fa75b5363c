"""Idempotency-Key on POST /v1/jobs: one key and body make one job; another body is a 422 conflict."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient

from shared.keys import Keys
from tests.unit.api.conftest import ApiHarness

BODY = {"image_url": "https://example.com/cat.jpg", "prompt": "a photo of"}


def post(client: TestClient, key: str, body: dict[str, object] = BODY) -> httpx.Response:
    return client.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})


def test_the_same_key_and_body_return_the_same_job_queued_once(client: TestClient, api_harness: ApiHarness) -> None:
    first, second = post(client, "key-1"), post(client, "key-1")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert api_harness.queue.queued == [first.json()["id"]]


def test_key_order_in_the_body_does_not_matter(client: TestClient) -> None:
    reordered = {"prompt": "a photo of", "image_url": "https://example.com/cat.jpg"}
    assert post(client, "key-2").json()["id"] == post(client, "key-2", reordered).json()["id"]


def test_the_same_key_with_another_body_is_a_conflict(client: TestClient, api_harness: ApiHarness) -> None:
    first = post(client, "key-3")
    response = post(client, "key-3", {**BODY, "prompt": "something else"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_conflict"
    assert api_harness.queue.queued == [first.json()["id"]]


def test_different_keys_make_different_jobs(client: TestClient) -> None:
    assert post(client, "key-4").json()["id"] != post(client, "key-5").json()["id"]


def test_without_a_key_every_post_is_a_new_job(client: TestClient) -> None:
    ids = {client.post("/v1/jobs", json=BODY).json()["id"] for _ in range(2)}
    assert len(ids) == 2


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_invalid(client: TestClient, key: str) -> None:
    response = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": key.encode()})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_a_key_is_kept_24_hours_as_a_digest(client: TestClient, api_harness: ApiHarness) -> None:
    post(client, "my-secret-key")

    async def names_and_ttls() -> list[tuple[str, int]]:
        redis = api_harness.redis()
        pattern = Keys(api_harness.settings.key_prefix).idempotency("anonymous", "*")
        return [(name.decode(), await redis.ttl(name)) async for name in redis.scan_iter(match=pattern)]

    [(name, ttl_s)] = asyncio.run(names_and_ttls())
    assert "my-secret-key" not in name
    assert 86_000 < ttl_s <= 86_400


def test_a_refused_request_frees_its_key_for_a_retry(client: TestClient, api_harness: ApiHarness) -> None:
    api_harness.queue.fail = True
    assert post(client, "key-6").status_code == 503
    api_harness.queue.fail = False
    retried = post(client, "key-6")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert api_harness.queue.queued == [retried.json()["id"]]
