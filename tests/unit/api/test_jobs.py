"""POST /v1/jobs and GET /v1/jobs/{id}: validation, storage, queueing, ownership and long-polls."""

from __future__ import annotations

import asyncio
import base64
import io
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shared.jobs.model import JobStatus
from shared.settings import Settings
from tests.unit.api.conftest import ApiHarness


def png_bytes(side: int = 8) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (220, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_a_url_job_is_stored_queued_and_located(client: TestClient, api_harness: ApiHarness) -> None:
    response = client.post("/v1/jobs", json={"image_url": "https://example.com/cat.jpg", "prompt": "a photo of"})
    assert response.status_code == 202
    body = response.json()
    assert response.headers["location"] == f"/v1/jobs/{body['id']}" == body["url"]
    assert body["status"] == "queued" and body["source"] == "url"
    assert body["prompt"] == "a photo of" and body["max_new_tokens"] == api_harness.settings.default_max_new_tokens
    assert "owner" not in body
    assert api_harness.queue.queued == [body["id"]]
    assert client.get(body["url"]).json() == body


def test_job_ids_are_unguessable_and_distinct(client: TestClient) -> None:
    ids = {client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"}).json()["id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(len(job_id) >= 20 for job_id in ids)


def test_a_base64_image_is_stored_as_an_upload(client: TestClient, api_harness: ApiHarness) -> None:
    data = png_bytes()
    response = client.post("/v1/jobs", json={"image_base64": base64.b64encode(data).decode()})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.json()["source"] == "upload"

    async def read() -> bytes | None:
        return await api_harness.store().read_upload(job_id)

    assert asyncio.run(read()) == data


def test_a_multipart_upload_with_form_fields_is_accepted(client: TestClient, api_harness: ApiHarness) -> None:
    response = client.post(
        "/v1/jobs",
        files={"file": ("red.png", png_bytes(), "image/png")},
        data={"max_new_tokens": "12", "prompt": "a sign saying", "webhook_events": "running"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["source"], body["max_new_tokens"], body["prompt"]) == ("upload", 12, "a sign saying")
    assert body["webhook_events"] == ["running"]
    assert api_harness.queue.queued == [body["id"]]


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        ({}, "invalid_request", 422),
        ({"image_url": "https://example.com/a.png", "image_base64": "AAAA"}, "invalid_request", 422),
        ({"image_url": "https://example.com/a.png", "max_new_tokens": 41}, "invalid_request", 422),
        ({"image_url": "https://example.com/a.png", "max_new_tokens": 0}, "invalid_request", 422),
        ({"image_url": "https://example.com/a.png", "prompt": "x" * 51}, "invalid_request", 422),
        ({"image_url": "https://example.com/a.png", "colour": "red"}, "invalid_request", 422),
        ({"image_url": "ftp://example.com/a.png"}, "url_not_allowed", 400),
        ({"image_url": "http://169.254.169.254/latest/meta-data"}, "url_not_allowed", 400),
        ({"image_url": "https://example.com/a.png", "webhook_url": "file:///etc/passwd"}, "url_not_allowed", 400),
        ({"image_base64": "not base64!"}, "invalid_request", 422),
        ({"image_base64": base64.b64encode(b"%PDF-1.7 not an image").decode()}, "not_an_image", 415),
    ],
)
def test_invalid_submissions_are_problems_with_stable_codes(
    client: TestClient, api_harness: ApiHarness, body: dict[str, object], code: str, status: int
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == code and problem["status"] == status
    assert problem["type"].endswith(code) and problem["title"] and problem["detail"]
    assert api_harness.queue.queued == []


def test_an_upload_that_is_not_an_image_is_refused_by_its_bytes(client: TestClient) -> None:
    response = client.post("/v1/jobs", files={"file": ("cat.png", b"<html>not really</html>", "image/png")})
    assert response.status_code == 415
    assert response.json()["code"] == "not_an_image"


def test_an_oversized_upload_is_refused(client: TestClient, api_harness: ApiHarness) -> None:
    too_big = png_bytes() + b"\0" * api_harness.settings.max_upload_bytes
    response = client.post("/v1/jobs", files={"file": ("big.png", too_big, "image/png")})
    assert response.status_code == 413
    assert response.json()["code"] == "upload_too_large"


def test_a_multipart_submission_without_a_file_is_invalid(client: TestClient) -> None:
    response = client.post("/v1/jobs", data={"prompt": "hello"}, files={"other": ("x.txt", b"x", "text/plain")})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_a_body_that_is_neither_json_nor_multipart_is_unsupported(client: TestClient) -> None:
    response = client.post("/v1/jobs", content=b"image_url=x", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_an_unknown_job_is_a_404_problem(client: TestClient) -> None:
    for job_id in ("job_AAAAAAAAAAAAAAAAAAAAAA", "nonsense", "x" * 500):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404
        assert response.json()["code"] == "job_not_found"


def test_another_owners_job_is_not_found(client: TestClient, api_harness: ApiHarness) -> None:
    job_id = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"}).json()["id"]

    async def steal() -> None:
        assert await api_harness.store().update(job_id, owner="someone-else")

    asyncio.run(steal())
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404


def test_unknown_routes_are_problems_too(client: TestClient) -> None:
    response = client.get("/v2/nothing")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


def test_a_broker_outage_answers_503_and_marks_the_job_failed(client: TestClient, api_harness: ApiHarness) -> None:
    api_harness.queue.fail = True
    response = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"})
    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"


def test_a_redis_outage_answers_503_queue_unavailable(api_settings: object) -> None:
    import api.app
    from shared.settings import Settings

    assert isinstance(api_settings, Settings)
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(api.app.create_app(settings)) as client:
        response = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"})
        assert response.status_code == 503
        assert response.json()["code"] == "queue_unavailable"
        assert client.get("/readyz").json()["code"] == "queue_unavailable"
        assert client.get("/healthz").status_code == 200


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """Long-polls of up to 60 s, so an answer on the job's end is told apart from one on the wait's end."""
    return api_settings.model_copy(update={"max_wait_s": 60})


def test_long_poll_answers_as_soon_as_the_job_ends(api_harness: ApiHarness) -> None:
    async def scenario() -> None:
        app = api_harness.app
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                job_id = (await http.post("/v1/jobs", json={"image_url": "https://example.com/a.png"})).json()["id"]
                # A wait longer than the scenario's own 20 s deadline: only the job's end can answer it.
                poll = asyncio.create_task(http.get(f"/v1/jobs/{job_id}", params={"wait": 60}))
                await _until(lambda: job_id in app.state.services.job_events._waiters)
                store = api_harness.store()
                assert await store.transition(job_id, JobStatus.RUNNING)
                assert await store.transition(job_id, JobStatus.SUCCEEDED, caption="a red circle")
                response = await poll
                assert response.json()["status"] == "succeeded" and response.json()["caption"] == "a red circle"

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_long_poll_of_a_finished_job_answers_at_once(client: TestClient, api_harness: ApiHarness) -> None:
    job_id = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"}).json()["id"]

    async def finish() -> None:
        store = api_harness.store()
        assert await store.transition(job_id, JobStatus.FAILED, error={"code": "fetch_failed", "message": "404"})

    asyncio.run(finish())
    started = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}", params={"wait": 60}).json()["status"] == "failed"
    # Half the wait asked for: a loaded machine is slow, but not 30 s slow for one in-process request.
    assert time.monotonic() - started < 30


def test_long_poll_gives_up_after_the_wait_with_the_job_as_it_is(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"}).json()["id"]
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.3})
    assert response.status_code == 200 and response.json()["status"] == "queued"
    # At least the wait (the clock cannot run early); at most far less than a hung poll would take.
    assert 0.3 <= time.monotonic() - started < 30


def test_wait_beyond_the_documented_maximum_is_invalid(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={"image_url": "https://example.com/a.png"}).json()["id"]
    response = client.get(f"/v1/jobs/{job_id}", params={"wait": 301})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


async def _until(predicate: object, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)
