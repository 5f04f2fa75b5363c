"""No secret reaches a log: a canary in image and webhook URLs' query strings and user info, searched in every log file.

The job runs through the whole stack (API, caption worker, webhook worker), plus an API
process of its own with uvicorn's access log on, so Celery's task lines, uvicorn's
access lines and our own events all have their chance to write the canary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from scripts.processes import free_port
from scripts.stack import LocalStack
from tests.integration.webhook_receiver import WebhookReceiver
from tests.servers import HostileServer
from tests.stack import log_of

CANARY = "canary-4f1c9b7e"
WAIT_S = 60


@pytest.fixture
def logged_api(stack: LocalStack, tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    """A second API process on the stack's Redis, with the access log on; its log folder."""
    extra = LocalStack(tmp_path, env=stack.env, api_port=free_port(), redis_url=stack.redis_url, access_log=True)
    try:
        extra.start_api()
        with httpx.Client(base_url=extra.api_url, timeout=90) as client:
            yield client, tmp_path
    finally:
        extra.stop()


def wait_for_log(path: Path, text: str, deadline_s: float = 30) -> None:
    """Poll a process's log until ``text`` is in it (the line after the one we care about)."""
    end = time.monotonic() + deadline_s
    while text not in path.read_text(errors="replace"):
        assert time.monotonic() < end, f"{text!r} not logged in {path.name}"
        time.sleep(0.1)


def test_no_log_line_of_any_process_holds_a_url_secret(
    api: httpx.Client,
    logged_api: tuple[httpx.Client, Path],
    stack: LocalStack,
    image_server: HostileServer,
    webhook_receiver: WebhookReceiver,
) -> None:
    access_logged, access_log_dir = logged_api
    image_url = image_server.url(f"/image/shape.png?sig={CANARY}&se=2030-01-01#{CANARY}")
    webhook_url = f"{webhook_receiver.url}?token={CANARY}"
    response = api.post("/v1/jobs", json={"image_url": image_url, "webhook_url": webhook_url})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    # The job still works: captioned, and its webhook delivered to the URL with its token.
    job = api.get(f"/v1/jobs/{job_id}", params={"wait": WAIT_S}).json()
    assert job["status"] == "succeeded", log_of(stack, "worker")
    webhook_receiver.wait_for(lambda: bool(webhook_receiver.for_job(job_id)))

    # Refused URLs with user info, and a GET whose query holds a signed URL, through the access-logged API.
    for field in ("image_url", "webhook_url"):
        body = {"image_url": image_server.url("/image/shape.png"), field: f"http://u:{CANARY}@127.0.0.1/x.png"}
        refused = access_logged.post("/v1/jobs", json=body)
        assert (refused.status_code, refused.json()["code"]) == (400, "url_not_allowed")
    caption = access_logged.get(f"/caption?url={quote(image_url, safe='')}")
    assert caption.status_code == 200, caption.text

    # Every process has written the lines that come after the ones that could leak.
    wait_for_log(stack.log_dir / "webhooks.log", "captionizer.deliver_webhook")
    wait_for_log(stack.log_dir / "worker.log", job_id)
    wait_for_log(access_log_dir / "api.log", "GET /caption?")
    logs = sorted({*stack.log_dir.glob("*.log"), *access_log_dir.glob("*.log")})
    assert {path.name for path in logs} >= {"api.log", "worker.log", "webhooks.log"}
    leaks = {path.name: path.read_text(errors="replace").count(CANARY) for path in logs}
    assert leaks == dict.fromkeys(leaks, 0), leaks
    assert "GET /caption?REDACTED" in (access_log_dir / "api.log").read_text()
