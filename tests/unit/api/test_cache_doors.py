"""cache=false through every door (POST /v1/jobs as JSON and multipart, GET /caption, batch create, items, append,
and the OpenAI facade's chat completions and batch lines, where the SDK sends it as ``extra_body``).

Each door must accept the opt-out the same way: the stored job says ``use_cache`` false, the default
is true, and a value that is not a boolean is refused as ``invalid_request`` with the same status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shared.batches.model import item_job_id
from shared.jobs.model import Job
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness, MakeApiSettings
from tests.unit.api.test_jobs import png_bytes

URL = "https://example.com/a.png"


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    """Anonymous access, no rate limit; /caption answers 504 quickly (there is no worker here)."""
    return make_api_settings(
        max_upload_bytes=64 * 1024,
        max_request_bytes=2 * 1024 * 1024,
        caption_wait_s=0.05,
        openai_wait_s=0.05,
    )


def stored(api_harness: ApiHarness, job_id: str) -> Job:
    async def read() -> Job | None:
        return await api_harness.store().get(job_id)

    job = asyncio.run(read())
    assert job is not None
    return job


def _json_job(client: TestClient, cache: Any) -> tuple[int, Any]:
    body: dict[str, Any] = {"image_url": URL} if cache is None else {"image_url": URL, "cache": cache}
    response = client.post("/v1/jobs", json=body)
    return response.status_code, response.json()


def _multipart_job(client: TestClient, cache: Any) -> tuple[int, Any]:
    data = {} if cache is None else {"cache": str(cache).lower() if isinstance(cache, bool) else cache}
    response = client.post("/v1/jobs", files={"file": ("red.png", png_bytes(), "image/png")}, data=data)
    return response.status_code, response.json()


def _caption_get(client: TestClient, cache: Any) -> tuple[int, Any]:
    params = {"url": URL} if cache is None else {"url": URL, "cache": str(cache).lower()}
    response = client.get("/caption", params=params)
    body = response.json()
    # No worker: the job is stored and queued, and the wait ends with 504 naming it.
    return (202 if response.status_code == 504 else response.status_code), {"id": body.get("job_id"), **body}


def _batch_level(client: TestClient, cache: Any) -> tuple[int, Any]:
    body: dict[str, Any] = {"items": [{"image_url": URL}]}
    if cache is not None:
        body["cache"] = cache
    response = client.post("/v1/batches", json=body)
    answer = response.json()
    return response.status_code, {**answer, "id": item_job_id(answer["id"], 0) if "id" in answer else None}


def _batch_item(client: TestClient, cache: Any) -> tuple[int, Any]:
    item: dict[str, Any] = {"image_url": URL} if cache is None else {"image_url": URL, "cache": cache}
    response = client.post("/v1/batches", json={"items": [item]})
    answer = response.json()
    return response.status_code, {**answer, "id": item_job_id(answer["id"], 0) if "id" in answer else None}


def _batch_append(client: TestClient, cache: Any) -> tuple[int, Any]:
    opened = client.post("/v1/batches", json={"items": [{"image_url": URL}], "more_items": True}).json()
    body: dict[str, Any] = {"items": [{"image_url": URL}]}
    if cache is not None:
        body["cache"] = cache
    response = client.post(f"/v1/batches/{opened['id']}/items", json=body)
    return response.status_code, {**response.json(), "id": item_job_id(opened["id"], 1)}


def _chat_body(cache: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "captionizer",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": URL}}]}],
    }
    if cache is not None:
        body["cache"] = cache  # what the openai SDK sends for extra_body={"cache": ...}
    return body


def _openai_chat(client: TestClient, cache: Any) -> tuple[int, Any]:
    response = client.post("/openai/v1/chat/completions", json=_chat_body(cache))
    error = response.json()["error"]
    # No worker: the job is stored and queued, and the wait ends with 504 naming it.
    return (202 if response.status_code == 504 else response.status_code), {"id": error.get("job_id"), **error}


def _openai_batch(client: TestClient, cache: Any) -> tuple[int, Any]:
    line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions", "body": _chat_body(cache)}
    files = {"file": ("in.jsonl", json.dumps(line).encode(), "application/jsonl")}
    file_id = client.post("/openai/v1/files", files=files, data={"purpose": "batch"}).json()["id"]
    create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    response = client.post("/openai/v1/batches", json=create)
    answer = response.json()
    if response.status_code != 200:
        return response.status_code, answer["error"]
    return 202, {**answer, "id": item_job_id(answer["id"], 0)}


DOORS: dict[str, Callable[[TestClient, Any], tuple[int, Any]]] = {
    "json": _json_job,
    "multipart": _multipart_job,
    "caption_get": _caption_get,
    "batch": _batch_level,
    "batch_item": _batch_item,
    "batch_append": _batch_append,
    "openai_chat": _openai_chat,
    "openai_batch": _openai_batch,
}


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize(("cache", "expected"), [(None, True), (True, True), (False, False)])
def test_every_door_stores_the_cache_choice(
    door: str, cache: bool | None, expected: bool, client: TestClient, api_harness: ApiHarness
) -> None:
    status, body = DOORS[door](client, cache)
    assert status == 202, body
    job = stored(api_harness, body["id"])
    assert job.use_cache is expected
    assert job.cache is None and job.cached_from is None


@pytest.mark.parametrize("door", DOORS)
def test_every_door_refuses_a_cache_value_that_is_not_a_boolean(
    door: str, client: TestClient, api_harness: ApiHarness
) -> None:
    status, body = DOORS[door](client, "maybe")
    assert (status, body["code"]) in {(422, "invalid_request"), (400, "invalid_request")}


def test_a_batch_that_opted_out_keeps_its_items_out_unless_an_item_opts_in(
    client: TestClient, api_harness: ApiHarness
) -> None:
    opened = client.post("/v1/batches", json={"items": [{"image_url": URL}], "more_items": True, "cache": False})
    batch_id = opened.json()["id"]
    assert opened.json()["cache"] is False
    appended = client.post(
        f"/v1/batches/{batch_id}/items", json={"items": [{"image_url": URL}, {"image_url": URL, "cache": True}]}
    )
    assert appended.status_code == 202, appended.text
    assert [stored(api_harness, item_job_id(batch_id, i)).use_cache for i in range(3)] == [False, False, True]


def test_a_batch_counts_no_cache_hits_before_any_item_ended(client: TestClient) -> None:
    body = client.post("/v1/batches", json={"items": [{"image_url": URL}]}).json()
    assert body["cache_hits"] == 0
    assert client.get(f"/v1/batches/{body['id']}").json()["cache_hits"] == 0
