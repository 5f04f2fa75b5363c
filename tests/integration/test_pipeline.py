"""The whole pipeline, for real: HTTP in, Redis queue, a celery worker with the model resident, captions out."""

from __future__ import annotations

import http.client
import select
from urllib.parse import urlsplit

import httpx
import pytest

from scripts.stack import LocalStack
from tests.servers import HostileServer, hostile_images
from tests.stack import log_of, needs_embedded_model

#: Long-poll used by the tests; well beyond a CPU batch, well within pytest's timeout.
WAIT_S = 60


def wait_for_end(api: httpx.Client, job_id: str) -> dict[str, object]:
    response = api.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_S})
    assert response.status_code == 200, response.text
    job: dict[str, object] = response.json()
    return job


def submit(api: httpx.Client, **body: object) -> str:
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    job_id: str = response.json()["id"]
    return job_id


def test_a_url_job_goes_from_queued_to_succeeded(
    api: httpx.Client, image_server: HostileServer, stack: LocalStack
) -> None:
    job_id = submit(api, image_url=image_server.url("/image/shape.png"))
    job = wait_for_end(api, job_id)
    assert job["status"] == "succeeded", log_of(stack, "worker")
    assert isinstance(job["caption"], str) and job["caption"]
    assert job["started_at"] and job["finished_at"] and job["attempts"] == 1
    timings = job["timings"]
    assert isinstance(timings, dict) and timings["batch_size"] >= 1 and timings["generate_s"] > 0


@needs_embedded_model
@pytest.mark.parametrize(("image", "words"), [("shape.png", "red circle"), ("shape.jpg", "blue square")])
def test_the_embedded_model_names_the_drawn_shape(
    api: httpx.Client, image_server: HostileServer, image: str, words: str
) -> None:
    job = wait_for_end(api, submit(api, image_url=image_server.url(f"/image/{image}")))
    assert job["status"] == "succeeded"
    assert job["model"] == "embedded"
    assert words in str(job["caption"])


def test_an_uploaded_file_is_captioned(api: httpx.Client) -> None:
    data, media_type = hostile_images()["shape.png"]
    response = api.post("/v1/jobs", files={"file": ("circle.png", data, media_type)}, data={"max_new_tokens": "20"})
    assert response.status_code == 202, response.text
    job = wait_for_end(api, response.json()["id"])
    assert job["status"] == "succeeded" and job["source"] == "upload"
    assert job["caption"]


def test_the_blog_endpoint_answers_with_the_caption(api: httpx.Client, image_server: HostileServer) -> None:
    response = api.get("/caption", params={"url": image_server.url("/image/shape.png")})
    assert response.status_code == 200, response.text
    caption = response.json()
    assert isinstance(caption, str) and caption


@needs_embedded_model
def test_the_blog_endpoint_names_a_red_circle(api: httpx.Client, image_server: HostileServer) -> None:
    response = api.get("/caption", params={"url": image_server.url("/image/shape.png")})
    assert response.status_code == 200
    assert "red circle" in response.json()


def test_a_missing_image_fails_its_job_with_fetch_failed(api: httpx.Client, image_server: HostileServer) -> None:
    job = wait_for_end(api, submit(api, image_url=image_server.url("/status/404")))
    assert job["status"] == "failed"
    assert job["error"] == {"code": "fetch_failed", "message": job["error"]["message"], "upstream_status": 404}  # type: ignore[index]


def test_a_burst_of_jobs_is_captioned_in_shared_batches(api: httpx.Client, image_server: HostileServer) -> None:
    ids = [submit(api, image_url=image_server.url("/image/shape.png")) for _ in range(6)]
    ids.append(submit(api, image_url=image_server.url("/status/500")))  # a bad one among them
    jobs = [wait_for_end(api, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 6 + ["failed"]
    sizes = [job["timings"]["batch_size"] for job in jobs[:6]]  # type: ignore[index]
    assert max(sizes) > 1, sizes
    # Every image shares one drawing, so one model gives one caption.
    assert len({job["caption"] for job in jobs[:6]}) == 1


def test_the_worker_serves_its_metrics(api: httpx.Client, image_server: HostileServer, metrics_port: int) -> None:
    wait_for_end(api, submit(api, image_url=image_server.url("/image/shape.png")))
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert "captionizer_batch_size_count" in metrics
    assert 'captionizer_jobs_finished_total{code="",status="succeeded"}' in metrics
    assert "captionizer_worker_model_loaded 1.0" in metrics


def test_an_idle_connection_outlives_the_clients_own_keep_alive(stack: LocalStack) -> None:
    """The API keeps an idle connection open longer than httpx keeps its own (5 s): the client drops it first.

    With equal timeouts (uvicorn's default is httpx's 5 s), a request sent on a connection idle for about
    5 s can meet the server's close and is lost ("Server disconnected without sending a response").
    """
    host, port = urlsplit(stack.api_url).hostname, urlsplit(stack.api_url).port
    assert host is not None and port is not None
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        assert first.status == 200 and first.read()
        assert connection.sock is not None
        # Waits for the server's close (the socket turns readable with EOF), up to a second past httpx's expiry.
        readable, _, _ = select.select([connection.sock], [], [], 6.0)
        assert readable == [], "the API closed an idle connection before its clients would drop it"
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
