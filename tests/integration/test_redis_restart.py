"""A Redis restart (AOF, everysec, as docker-compose runs it) with jobs queued and running loses none of them."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from shared.jobs.model import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.servers import HostileServer

pytestmark = pytest.mark.slow

JOBS = 40


def is_ready(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def assert_queue_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "queue_unavailable"


def test_jobs_survive_a_redis_restart_and_every_process_recovers_by_itself(
    chaos: Chaos, image_server: HostileServer
) -> None:
    # A second per image: some jobs run, the rest wait in the queue, when Redis goes.
    job_ids = [chaos.submit(image_url=image_server.url("/delayed/1")) for _ in range(JOBS)]
    worker_pid = chaos.worker().pid
    wait_until(
        lambda: chaos.count_in(job_ids, "running") > 0 and chaos.count_in(job_ids, "queued") > 0,
        timeout_s=60,
        what="jobs both running and queued",
    )
    chaos.stack.stop_redis()
    try:
        assert_queue_unavailable(chaos.api.post("/v1/jobs", json={"image_url": image_server.url("/image/shape.png")}))
        assert_queue_unavailable(chaos.api.get(f"/v1/jobs/{job_ids[0]}"))
        assert_queue_unavailable(chaos.api.get("/readyz"))
        # Stay away until a running job has tried to record its result and given its task back.
        wait_until(
            lambda: bool(chaos.log_events("worker", "job store unavailable; requeueing")),
            timeout_s=30,
            what="a running job to meet the outage",
        )
    finally:
        chaos.stack.start_redis()
    # Nobody is restarted: the API, its long-poll subscription and the worker reconnect on their own.
    wait_until(lambda: is_ready(chaos.api), timeout_s=60, what="/readyz to answer 200 again")
    late = chaos.submit(image_url=image_server.url("/image/shape.png"))
    jobs = chaos.wait_all_final([*job_ids, late], timeout_s=120)
    assert Counter(job.status for job in jobs.values()) == {JobStatus.SUCCEEDED: JOBS + 1}
    assert chaos.worker().pid == worker_pid and chaos.worker().is_running()
