"""Hostile image URLs and uploads through the real API and worker: each fails its own job, the next job succeeds.

The stack (``conftest.py``) allows private networks so the worker can reach the local image server;
the address rules with private networks off are covered by ``tests/unit/worker/test_intake.py``.
What is left to prove here is the wiring: the API's up-front refusals, each worker-side failure recorded
on the job with its code, and a worker that keeps serving.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.servers import HostileServer, hostile_images

# Long-poll bound per request; the API caps it at its max_wait_s (60 s by default).
_WAIT_S = 60


def run_job(api: httpx.Client, image_url: str) -> dict[str, Any]:
    """Submit a URL job and return it once it has ended."""
    created = api.post("/v1/jobs", json={"image_url": image_url})
    assert created.status_code == 202, created.text
    return wait_for_end(api, created.json())


def wait_for_end(api: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    """Long-poll ``job`` until it has ended."""
    for _ in range(5):  # a few long-polls: the deadline is the test timeout, not a sleep
        job = api.get(job["url"], params={"wait": _WAIT_S}).json()
        if job["status"] in ("succeeded", "failed", "canceled", "expired"):
            return job
    raise AssertionError(f"job did not end: {job}")


WORKER_REFUSALS = [
    ("/image/bomb.png", "too_many_pixels", None),
    ("/image/wide.png", "image_aspect_ratio", None),  # 200000x1: once enough to OOM-kill a git-base worker
    ("/image/tall.png", "image_aspect_ratio", None),
    ("/image/page.html", "not_an_image", None),
    ("/image/truncated.jpg", "image_corrupt", None),
    ("/image/scan-bomb.jpg", "image_too_complex", None),  # refused from its structure before decoding
    ("/image/chunk-bomb.png", "image_too_complex", None),
    ("/status/404", "fetch_failed", 404),
    ("/declared-huge", "image_too_large", None),
    ("/chain/5", "fetch_failed", 302),
    ("/redirect?to=file:///etc/passwd", "url_not_allowed", None),
    ("/redirect?to=http://127.0.0.1:6379/", "url_not_allowed", None),  # Redis: a port not on the list
]


@pytest.mark.parametrize(("path", "code", "upstream_status"), WORKER_REFUSALS)
def test_a_hostile_url_fails_its_job_and_the_worker_serves_the_next(
    api: httpx.Client, image_server: HostileServer, model_path: str, path: str, code: str, upstream_status: int | None
) -> None:
    failed = run_job(api, image_server.url(path))
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == code
    assert failed["error"]["upstream_status"] == upstream_status
    assert failed["caption"] is None

    following = run_job(api, image_server.url("/image/shape.png"))
    assert following["status"] == "succeeded", following
    if model_path == "embedded":  # the tiny random stand-in model captions nonsense
        assert following["caption"] == "a large red circle on a white background"


@pytest.mark.parametrize(
    "name", ["cmyk.jpg", "gray16.png", "palette-transparent.png", "animated.gif", "exif-rotated.jpg", "large.jpg"]
)
def test_awkward_but_honest_images_are_captioned(api: httpx.Client, image_server: HostileServer, name: str) -> None:
    job = run_job(api, image_server.url(f"/image/{name}"))
    assert job["status"] == "succeeded", job
    assert job["caption"]


@pytest.mark.parametrize(
    "image_url",
    [
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "http://user:secret@example.com/cat.png",
        "http://example.com:6379/cat.png",
        "http://example.com\\@127.0.0.1/cat.png",
        "http://0x7f.1/cat.png",  # legacy IPv4 spelling: refused even where private networks are allowed
    ],
)
def test_the_api_refuses_what_it_can_see_up_front(api: httpx.Client, image_url: str) -> None:
    response = api.post("/v1/jobs", json={"image_url": image_url})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "url_not_allowed"


def test_an_upload_that_is_not_an_image_is_refused_up_front(api: httpx.Client) -> None:
    files = {"file": ("cat.png", b"<!doctype html><title>not a cat</title>", "image/png")}
    response = api.post("/v1/jobs", files=files)
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "not_an_image"


def test_an_uploaded_bomb_passes_the_magic_check_and_fails_its_job_in_the_worker(api: httpx.Client) -> None:
    bomb = hostile_images()["bomb.png"][0]
    created = api.post("/v1/jobs", files={"file": ("bomb.png", bomb, "image/png")})
    assert created.status_code == 202, created.text
    job = wait_for_end(api, created.json())
    assert (job["status"], job["error"]["code"]) == ("failed", "too_many_pixels")
