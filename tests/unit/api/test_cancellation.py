"""POST /v1/jobs/{id}/cancel: queued and running jobs end canceled, finished ones answer 409, others' 404."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from shared.jobs.model import JobStatus
from shared.keys import WEBHOOK_TASK
from tests.unit.api.conftest import ApiHarness


def submit(client: TestClient, **body: object) -> str:
    response = client.post("/v1/jobs", json={"image_url": "https://example.com/cat.jpg", **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def move(api_harness: ApiHarness, job_id: str, *statuses: JobStatus) -> None:
    async def play() -> None:
        store = api_harness.store()
        for status in statuses:
            assert await store.transition(job_id, status)

    asyncio.run(play())


@pytest.mark.parametrize("before", [[], [JobStatus.RUNNING]], ids=["queued", "running"])
def test_an_unfinished_job_is_canceled(client: TestClient, api_harness: ApiHarness, before: list[JobStatus]) -> None:
    job_id = submit(client)
    move(api_harness, job_id, *before)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "canceled" and body["finished_at"] is not None and body["caption"] is None
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_a_running_jobs_late_result_is_discarded(client: TestClient, api_harness: ApiHarness) -> None:
    job_id = submit(client)
    move(api_harness, job_id, JobStatus.RUNNING)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    async def finish_late() -> bool:
        return await api_harness.store().transition(job_id, JobStatus.SUCCEEDED, caption="too late")

    assert asyncio.run(finish_late()) is False
    body = client.get(f"/v1/jobs/{job_id}").json()
    assert body["status"] == "canceled" and body["caption"] is None


@pytest.mark.parametrize("end", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_a_finished_job_is_not_cancelable(client: TestClient, api_harness: ApiHarness, end: JobStatus) -> None:
    job_id = submit(client)
    move(api_harness, job_id, JobStatus.RUNNING, end)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "job_not_cancelable" and problem["job_id"] == job_id and problem["status"] == 409
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == str(end)


def test_canceling_twice_answers_409_the_second_time(client: TestClient) -> None:
    job_id = submit(client)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["code"] == "job_not_cancelable"


def test_an_unknown_job_is_not_found(client: TestClient) -> None:
    response = client.post("/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA/cancel")
    assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_the_cancel_webhook_is_queued(client: TestClient, api_harness: ApiHarness) -> None:
    job_id = submit(client, webhook_url="https://example.com/hook")
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    sent = [args for name, args, _ in api_harness.queue.sent if name == WEBHOOK_TASK]
    assert [delivery["event"] for (delivery,) in sent] == ["job.canceled"]
    assert client.get(f"/v1/jobs/{job_id}").json()["webhook"]["status"] == "pending"


def test_a_canceled_uploads_image_is_dropped(client: TestClient, api_harness: ApiHarness) -> None:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, "PNG")
    response = client.post("/v1/jobs", json={"image_base64": base64.b64encode(out.getvalue()).decode()})
    job_id = response.json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    async def upload_left() -> bytes | None:
        return await api_harness.store().read_upload(job_id)

    assert asyncio.run(upload_left()) is None
