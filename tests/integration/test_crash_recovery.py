"""Nothing accepted is lost when caption workers die: SIGKILL mid-batch and mid-chunk, and a job that kills its worker."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from scripts.chunks import ChunkSender
from shared.jobs import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.integration.crashing_worker import POISON_PROMPT
from tests.servers import HostileServer, Tarpit
from tests.stack import RELIABILITY_MAX_ATTEMPTS

pytestmark = pytest.mark.slow

JOBS = 120


def kill_while_held(chaos: Chaos, job_ids: list[str], tarpit: Tarpit, *, after_succeeded: int) -> None:
    """SIGKILL the worker once ``after_succeeded`` jobs are done while a job hangs in its hands (at the tarpit).

    The hanging job makes "jobs in hand" a state to wait on: however fast the worker, it cannot finish
    everything before the kill.
    """
    wait_until(
        lambda: tarpit.open >= 1 and chaos.count_in(job_ids, "succeeded") >= after_succeeded,
        timeout_s=90,
        what=f"{after_succeeded} jobs done with one held at the tarpit",
    )
    chaos.kill_worker()


def test_every_job_succeeds_once_through_two_worker_kills_mid_batch(chaos: Chaos, image_server: HostileServer) -> None:
    run = uuid.uuid4().hex
    first, second = image_server.tarpit(f"{run}-1"), image_server.tarpit(f"{run}-2")
    job_ids = [chaos.submit(image_url=image_server.url("/image/shape.png")) for _ in range(JOBS)]
    job_ids.append(chaos.submit(image_url=image_server.url(f"/tarpit/{run}-1")))
    with chaos.supervise():
        kill_while_held(chaos, job_ids, first, after_succeeded=1)
        first.release()
        wait_until(lambda: chaos.restarts == 1 and chaos.worker().is_running(), timeout_s=120, what="a restart")
        # Every job in hand at the kill comes back (after the redelivery timeout) and ends.
        chaos.wait_all_final(job_ids, timeout_s=150)
        more = [chaos.submit(image_url=image_server.url("/image/shape.png")) for _ in range(8)]
        more.append(chaos.submit(image_url=image_server.url(f"/tarpit/{run}-2")))
        kill_while_held(chaos, more, second, after_succeeded=1)
        second.release()
        job_ids += more
        jobs = chaos.wait_all_final(job_ids, timeout_s=150)
    assert Counter(job.status for job in jobs.values()) == {JobStatus.SUCCEEDED: len(job_ids)}
    assert all(job.caption and job.error is None for job in jobs.values())
    # Both kills caught jobs running (at least the held ones): they were delivered again and finished then.
    assert sum(job.attempts > 1 for job in jobs.values()) >= 2
    # One final record each: the store moved each job to succeeded exactly once (a late
    # duplicate's transition from a final state is refused, so it is never counted).
    assert chaos.job_counts()["entered:succeeded"] == len(job_ids)
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
    run = uuid.uuid4().hex
    first, second = image_server.tarpit(f"{run}-1"), image_server.tarpit(f"{run}-2")
    sender = ChunkSender(chaos.stack.redis_url, chaos.stack.keys.prefix)
    try:
        # The first chunk holds a job that hangs: its message stays unacknowledged while the others run.
        held_chunk = sender.store([image_server.url(f"/tarpit/{run}-1")] + [image_server.url("/image/shape.png")] * 7)
        rest = sender.store([image_server.url("/image/shape.png")] * JOBS)
        sender.send_chunks(held_chunk + rest, chunk_size=8)
        with chaos.supervise():
            kill_while_held(chaos, held_chunk[1:], first, after_succeeded=7)
            first.release()
            wait_until(lambda: chaos.restarts == 1 and chaos.worker().is_running(), timeout_s=120, what="a restart")
            chaos.wait_all_final(held_chunk + rest, timeout_s=150)
            second_chunk = sender.store(
                [image_server.url(f"/tarpit/{run}-2")] + [image_server.url("/image/shape.png")] * 7
            )
            sender.send_chunks(second_chunk, chunk_size=8)
            kill_while_held(chaos, second_chunk[1:], second, after_succeeded=7)
            second.release()
            job_ids = held_chunk + rest + second_chunk
            jobs = chaos.wait_all_final(job_ids, timeout_s=150)
    finally:
        sender.close()
    assert Counter(job.status for job in jobs.values()) == {JobStatus.SUCCEEDED: len(job_ids)}
    # Each killed chunk came back whole, yet only its item not yet recorded ran again.
    for chunk in (held_chunk, second_chunk):
        assert jobs[chunk[0]].attempts == 2
        assert all(jobs[job_id].attempts == 1 for job_id in chunk[1:])
    assert chaos.job_counts()["entered:succeeded"] == len(job_ids)
    ended = Counter(record["job_id"] for record in chaos.log_events("worker", "job ended"))
    assert max(ended[job_id] for job_id in job_ids) == 1
