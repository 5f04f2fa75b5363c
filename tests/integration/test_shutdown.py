"""Graceful shutdown: SIGTERM lets a worker finish the jobs in hand and the API finish its requests, then they exit."""

from __future__ import annotations

import signal
import threading
from collections import Counter

import httpx
import pytest

from shared.jobs.model import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.servers import HostileServer
from tests.stack import RELIABILITY_TIME_LIMIT_S

pytestmark = pytest.mark.slow

#: More jobs than the worker holds (twice its batch size of 8), so some wait in Redis.
JOBS = 24


def test_sigterm_lets_the_worker_finish_its_jobs_in_hand_and_leaves_the_rest_queued(
    chaos: Chaos, image_server: HostileServer
) -> None:
    job_ids = [chaos.submit(image_url=image_server.url("/delayed/2")) for _ in range(JOBS)]
    wait_until(lambda: chaos.count_in(job_ids, "running") >= 8, timeout_s=60, what="a batch in hand")
    worker = chaos.worker()
    in_hand = [job_id for job_id, job in chaos.jobs(job_ids).items() if job.status is JobStatus.RUNNING]
    worker.signal_group(signal.SIGTERM)
    # Bounded: every job in hand ends within its time limit, plus one for its turn at the gate.
    wait_until(lambda: not worker.is_running(), timeout_s=2 * RELIABILITY_TIME_LIMIT_S + 10, what="a warm shutdown")
    assert worker.process is not None and worker.process.returncode == 0
    assert "Warm shutdown" in worker.log_tail(20_000)
    after_stop = chaos.jobs(job_ids)
    assert all(after_stop[job_id].status is JobStatus.SUCCEEDED for job_id in in_hand)
    # Nothing was left half-done: the jobs it had not started went back to the queue.
    assert {job.status for job in after_stop.values()} <= {JobStatus.SUCCEEDED, JobStatus.QUEUED}
    assert any(job.status is JobStatus.QUEUED for job in after_stop.values())
    # Its heartbeat went with it: with no worker ready, the API is not ready either.
    readiness = chaos.api.get("/readyz")
    assert readiness.status_code == 503 and readiness.json()["code"] == "model_not_ready"
    chaos.start_worker()
    assert chaos.api.get("/readyz").json() == {"status": "ok", "workers": 1}
    jobs = chaos.wait_all_final(job_ids, timeout_s=90)
    assert Counter(job.status for job in jobs.values()) == {JobStatus.SUCCEEDED: JOBS}
    assert chaos.job_counts()["entered:succeeded"] == JOBS


def test_sigterm_lets_the_api_answer_the_requests_in_flight(chaos: Chaos, image_server: HostileServer) -> None:
    answers: list[httpx.Response] = []

    def blog_call() -> None:
        # GET /caption holds its request open until the job ends: a request in flight we can see in Redis.
        answers.append(chaos.api.get("/caption", params={"url": image_server.url("/delayed/3")}))

    caller = threading.Thread(target=blog_call)
    caller.start()
    wait_until(lambda: bool(chaos.redis.keys(chaos.stack.keys.job("*"))), timeout_s=30, what="the request's job")
    api = chaos.stack.api
    assert api is not None
    api.signal_group(signal.SIGTERM)
    caller.join(timeout=60)
    assert [response.status_code for response in answers] == [200], answers and answers[0].text
    assert isinstance(answers[0].json(), str)
    wait_until(lambda: not api.is_running(), timeout_s=30, what="the API to exit")
    # uvicorn re-raises the signal once its shutdown is complete, so its supervisor sees why it stopped.
    assert api.process is not None and api.process.returncode in (0, -signal.SIGTERM)
    log = api.log_tail(20_000)
    assert "Application shutdown complete" in log[log.rindex("Waiting for connections to close") :]
    # New connections were refused meanwhile; Chaos.restore() starts the API again for the next test.
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{chaos.stack.api_url}/healthz", timeout=2)
