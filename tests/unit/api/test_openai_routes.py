"""/openai/v1 over fakeredis: the same guards and codes as the native routes, in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import api.app
from api.http.auth import hash_key
from shared.jobs.model import JobStatus, JobUsage
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness, MakeApiSettings

KEY_A = "cap_openai-a-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_B = "cap_openai-b-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def api_settings(make_api_settings: MakeApiSettings) -> Settings:
    """The API unit tests' settings, with a batch file limit below their request limit."""
    return make_api_settings(
        max_upload_bytes=64 * 1024,
        max_request_bytes=128 * 1024,
        openai_max_file_bytes=96 * 1024,
        openai_wait_s=5,
    )


PNG_DATA_URL = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def chat_body(url: str, **extra: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    return {"model": "any", "messages": [{"role": "user", "content": content}], **extra}


def post_chat_while_worker_succeeds(api_harness: ApiHarness, body: dict[str, Any]) -> httpx.Response:
    """POST a chat completion while this test plays the worker: the job succeeds with a caption and usage."""

    async def scenario() -> httpx.Response:
        app = api_harness.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                request = asyncio.create_task(http.post("/openai/v1/chat/completions", json=body))
                deadline = time.monotonic() + 30
                while not api_harness.queue.queued and not request.done():
                    assert time.monotonic() < deadline, "the job was never queued"
                    await asyncio.sleep(0.001)
                if api_harness.queue.queued:
                    store = api_harness.store()
                    job_id = api_harness.queue.queued[0]
                    assert await store.transition(job_id, JobStatus.RUNNING)
                    usage = JobUsage(prompt_tokens=0, completion_tokens=3)
                    assert await store.transition(
                        job_id, JobStatus.SUCCEEDED, caption="a red circle", model="embedded", usage=usage
                    )
                return await request

    return asyncio.run(asyncio.wait_for(scenario(), 20))


def test_a_chat_completion_answers_the_jobs_caption_with_usage(api_harness: ApiHarness) -> None:
    response = post_chat_while_worker_succeeds(api_harness, chat_body("https://example.com/red.png", max_tokens=9))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "embedded"
    assert body["choices"][0]["message"]["content"] == "a red circle"
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}
    assert body["id"] == "chatcmpl-" + api_harness.queue.queued[0]


def test_a_streamed_completion_is_server_sent_events_ending_with_done(api_harness: ApiHarness) -> None:
    body = chat_body("https://example.com/red.png", stream=True, stream_options={"include_usage": True})
    response = post_chat_while_worker_succeeds(api_harness, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "a red circle"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def openai_error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json", response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("http://169.254.169.254/latest/meta-data/", 400, "url_not_allowed"),
        ("http://localhost:6379/", 400, "url_not_allowed"),
        ("ftp://example.com/a.png", 400, "url_not_allowed"),
        ("https://user:secret@example.com/a.png", 400, "url_not_allowed"),
    ],
)
def test_guards_refuse_through_the_facade_with_the_native_code(
    client: TestClient, url: str, status: int, code: str
) -> None:
    native = client.post("/v1/jobs", json={"image_url": url})
    facade = client.post("/openai/v1/chat/completions", json=chat_body(url))
    assert (native.status_code, native.json()["code"]) == (status, code)
    assert facade.status_code == status
    error = openai_error(facade)
    assert error["code"] == code
    assert "secret" not in facade.text


def test_an_oversized_inline_image_is_refused_as_natively(client: TestClient, api_harness: ApiHarness) -> None:
    # api_settings: max_upload_bytes 64 KiB, max_request_bytes 128 KiB.
    huge = "data:image/png;base64," + "A" * (100 * 1024)
    facade = client.post("/openai/v1/chat/completions", json=chat_body(huge))
    native = client.post("/v1/jobs", json={"image_base64": "A" * (100 * 1024)})
    assert facade.status_code == native.status_code == 413
    assert openai_error(facade)["code"] == native.json()["code"] == "upload_too_large"
    assert api_harness.queue.queued == []


def test_a_request_that_changes_meaning_is_400_in_openai_shape(client: TestClient) -> None:
    response = client.post("/openai/v1/chat/completions", json=chat_body("https://example.com/a.png", n=3))
    assert response.status_code == 400
    assert openai_error(response) == {
        "message": "n must be 1: captions are decoded greedily, so more choices would be copies",
        "type": "invalid_request_error",
        "param": "n",
        "code": "invalid_request",
    }


def test_a_malformed_body_is_400_naming_the_field(client: TestClient) -> None:
    response = client.post("/openai/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 400
    error = openai_error(response)
    assert (error["code"], error["param"]) == ("invalid_request", "messages")


def test_unknown_facade_routes_are_404_in_openai_shape(client: TestClient) -> None:
    response = client.get("/openai/v1/embeddings")
    assert response.status_code == 404 and openai_error(response)["code"] == "not_found"


def test_the_served_model_is_listed_before_any_worker_reports(client: TestClient) -> None:
    response = client.get("/openai/v1/models")
    assert response.status_code == 200
    assert response.json()["data"] == [
        {"id": "embedded", "object": "model", "created": 0, "owned_by": "captionizer", "embedded": True}
    ]


def upload(client: TestClient, content: bytes, purpose: str = "batch", **headers: str) -> httpx.Response:
    files = {"file": ("in.jsonl", content, "application/jsonl")}
    return client.post("/openai/v1/files", files=files, data={"purpose": purpose}, headers=headers)


def batch_line(custom_id: str, url: str) -> str:
    body = chat_body(url)
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def test_a_batch_queues_good_lines_and_counts_bad_and_refused_ones_as_failed(
    client: TestClient, api_harness: ApiHarness
) -> None:
    lines = [batch_line("ok-1", "https://example.com/1.png"), batch_line("ssrf", "http://169.254.169.254/")]
    lines += [batch_line("ok-2", PNG_DATA_URL), "not json"]
    uploaded = upload(client, "\n".join(lines).encode())
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    assert client.get(f"/openai/v1/files/{file_id}/content").content == "\n".join(lines).encode()

    created = client.post(
        "/openai/v1/batches",
        json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )

    assert created.status_code == 200, created.text
    batch = created.json()
    assert batch["status"] == "in_progress"
    assert batch["request_counts"] == {"total": 4, "completed": 0, "failed": 2}
    # One native batch: the readable lines are its items, and the SSRF one failed alone at admission.
    native = client.get(f"/v1/batches/{batch['id']}").json()
    assert (native["total"], native["counts"]["failed"]) == (3, 1)
    items = client.get(f"/v1/batches/{batch['id']}/results").json()["items"]
    assert [(item["ref"], item["status"]) for item in items] == [
        ("ok-1", "queued"),
        ("ssrf", "failed"),
        ("ok-2", "queued"),
    ]
    assert items[1]["error"]["code"] == "url_not_allowed"
    queued = [job_id for _, args, _ in api_harness.queue.sent for chunk in args for job_id in chunk]
    assert queued == [items[0]["id"], items[2]["id"]]
    listed = client.get("/openai/v1/batches").json()
    assert [entry["id"] for entry in listed["data"]] == [batch["id"]]


def test_files_and_batches_of_another_key_are_not_found(api_harness: ApiHarness) -> None:
    # The harness patched Redis onto fakeredis; this app has two keys and no anonymous access.
    settings = Settings(
        rate_limit_per_minute=0, key_prefix="captionizer-test", api_key_hashes=[hash_key(KEY_A), hash_key(KEY_B)]
    )
    with TestClient(api.app.create_app(settings)) as client:
        as_a = {"Authorization": f"Bearer {KEY_A}"}
        as_b = {"Authorization": f"Bearer {KEY_B}"}
        file_id = upload(client, batch_line("x", "https://example.com/1.png").encode(), **as_a).json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        stolen = client.post("/openai/v1/batches", json=body, headers=as_b)
        assert stolen.status_code == 404 and openai_error(stolen)["code"] == "file_not_found"
        assert client.get(f"/openai/v1/files/{file_id}/content", headers=as_b).status_code == 404
        assert client.get("/openai/v1/files", headers=as_b).json()["data"] == []
        unauthenticated = client.get("/openai/v1/models", headers={"Authorization": "Bearer cap_wrong"})
        assert unauthenticated.status_code == 401
        assert openai_error(unauthenticated)["type"] == "authentication_error"


def test_a_file_over_the_limit_is_413(client: TestClient, api_harness: ApiHarness) -> None:
    limit = api_harness.settings.openai_max_file_bytes
    response = upload(client, b"x" * (limit + 1))
    assert response.status_code == 413 and openai_error(response)["code"] == "upload_too_large"


def test_a_file_of_another_purpose_is_refused(client: TestClient) -> None:
    response = upload(client, b"{}", purpose="fine-tune")
    assert response.status_code == 400 and openai_error(response)["param"] == "purpose"


def test_the_openapi_schema_describes_the_facade(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/openai/v1/models",
        "/openai/v1/chat/completions",
        "/openai/v1/files",
        "/openai/v1/files/{file_id}",
        "/openai/v1/files/{file_id}/content",
        "/openai/v1/batches",
        "/openai/v1/batches/{batch_id}",
        "/openai/v1/batches/{batch_id}/cancel",
    } <= set(paths)
    assert paths["/openai/v1/chat/completions"]["post"]["operationId"] == "openaiCreateChatCompletion"
