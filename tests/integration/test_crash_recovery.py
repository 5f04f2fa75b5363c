"""Nothing accepted is lost when caption workers die: SIGKILL mid-batch, and a job that kills its worker."""

from __future__ import annotations

from collections import Counter

import pytest

from scripts.chunks import ChunkSender
from shared.jobs import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.integration.crashing_worker import POISON_PROMPT
from tests.servers import HostileServer
from tests.stack import RELIABILITY_MAX_ATTEMPTS

pytestmark = pytest.mark.slow

JOBS = 120


def kill_mid_batch(chaos: Chaos, job_ids: list[str], *, after_succeeded: int) -> None:
    """SIGKILL the worker once ``after_succeeded`` jobs are done and some are running (a batch in hand)."""
    wait_until(
        lambda: chaos.count_in(job_ids, "succeeded") >= after_succeeded and chaos.count_in(job_ids, "running") > 0,
        timeout_s=90,
        what=f"{after_succeeded} jobs done with a batch in hand",
    )
    chaos.kill_worker()


def test_every_job_succeeds_once_through_two_worker_kills_mid_batch(chaos: Chaos, image_server: HostileServer) -> None:
    job_ids = [chaos.submit(image_url=image_server.url("/image/shape.png")) for _ in range(JOBS)]
    with chaos.supervise():
        kill_mid_batch(chaos, job_ids, after_succeeded=1)
        wait_until(lambda: chaos.restarts == 1 and chaos.worker().is_running(), timeout_s=120, what="a restart")
        done_before = chaos.count_in(job_ids, "succeeded")
        kill_mid_batch(chaos, job_ids, after_succeeded=done_before + 1)
        jobs = chaos.wait_all_final(job_ids, timeout_s=150)
    assert Counter(job.status for job in jobs.values()) == {JobStatus.SUCCEEDED: JOBS}
    assert all(job.caption and job.error is None for job in jobs.values())
    # Both kills caught jobs running: they were delivered again and finished then.
    assert sum(job.attempts > 1 for job in jobs.values()) >= 2
    # One final record each: the store moved each job to succeeded exactly once (a late
    # duplicate's transition from a final state is refused, so it is never counted).
    assert chaos.job_counts()["entered:succeeded"] == JOBS
    ended = Counter(record["job_id"] for record in chaos.log_events("worker", "job ended"))
    assert max(ended[job_id] for job_id in job_ids) == 1


def test_a_job_that_kills_its_worker_fails_alone_after_the_delivery_limit(
    chaos: Chaos, image_server: HostileServer
) -> None:
    poison = chaos.submit(image_url=image_server.url("/image/shape.png"), prompt=POISON_PROMPT)
    innocents = [chaos.submit(image_url=image_server.url("/image/shape.png")) for _ in range(10)]
    with chaos.supervise():
        jobs = chaos.wait_all_final([poison, *innocents], timeout_s=150)
    failed = jobs[poison]
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.code == "worker_crashed"
    # Delivered max_delivery_attempts times (each one killed the worker), refused on the next.
    assert failed.attempts == RELIABILITY_MAX_ATTEMPTS + 1
    assert chaos.restarts == RELIABILITY_MAX_ATTEMPTS
    # Redelivered jobs run alone, so the poison never took an innocent job down twice.
    assert all(jobs[job_id].status is JobStatus.SUCCEEDED for job_id in innocents)
    assert all(jobs[job_id].attempts <= 2 for job_id in innocents)


def test_every_chunk_item_ends_once_through_two_worker_kills_mid_chunk(
    chaos: Chaos, image_server: HostileServer
) -> None:
    sender = ChunkSender(chaos.stack.redis_url, chaos.stack.keys.prefix)
    try:
        job_ids = sender.store([image_server.url("/image/shape.png")] * JOBS)
        sender.send_chunks(job_ids, chunk_size=8)
    finally:
        sender.close()
    with chaos.supervise():
        kill_mid_batch(chaos, job_ids, after_succeeded=1)
        wait_until(lambda: chaos.restarts == 1 and chaos.worker().is_running(), timeout_s=120, what="a restart")
        done_before = chaos.count_in(job_ids, "succeeded")
        kill_mid_batch(chaos, job_ids, after_succeeded=done_before + 1)
        jobs = chaos.wait_all_final(job_ids, timeout_s=240)
    assert Counter(job.status for job in jobs.values()) == {JobStatus.SUCCEEDED: JOBS}
    # Items recorded before a kill were not run again: only those caught running came back.
    assert sum(job.attempts > 1 for job in jobs.values()) >= 2
    assert sum(job.attempts == 1 for job in jobs.values()) >= 2
    assert chaos.job_counts()["entered:succeeded"] == JOBS
    ended = Counter(record["job_id"] for record in chaos.log_events("worker", "job ended"))
    assert max(ended[job_id] for job_id in job_ids) == 1
