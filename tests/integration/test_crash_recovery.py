"""Nothing accepted is lost when caption workers die: SIGKILL mid-batch and mid-chunk, and a job that kills its worker."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from redis.asyncio import Redis as AsyncRedis

from scripts.chunks import ChunkSender
from shared.broker.config import restored_within_s, visibility_timeout_s
from shared.jobs.model import Job, JobStatus, utc_now
from shared.jobs.store import JobStore
from shared.settings import Settings
from tests.integration.chaos import Chaos, wait_until
from tests.integration.crashing_worker import POISON_PROMPT
from tests.servers import HostileServer, Tarpit
from tests.stack import (
    RELIABILITY_MAX_ATTEMPTS,
    RELIABILITY_REDELIVERY_S,
    RELIABILITY_TIME_LIMIT_S,
    RELIABILITY_WORKER_THREADS,
)
from worker.broker.bulk_flow import max_chunks_held
from worker.egress import CONNECTIONS_PER_HOST
from worker.recovery.redelivery import OrphanSweeper

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


def held_in_registry(chaos: Chaos) -> set[str]:
    """Every job id some caption worker's running-jobs registry names (worker.recovery.running_jobs)."""
    keys = chaos.stack.keys
    holders = [holder.decode() for holder in chaos.redis.zrange(keys.job_holders(), 0, -1)]
    return {job_id.decode() for holder in holders for job_id in chaos.redis.zrange(keys.held_jobs(holder), 0, -1)}


def sweep_now(chaos: Chaos) -> set[str]:
    """One orphan sweep round, as a caption worker of this stack runs it, now; the ids it would queue again."""
    settings = Settings(
        redis_url=chaos.stack.redis_url,
        key_prefix=chaos.stack.keys.prefix,
        job_time_limit_s=RELIABILITY_TIME_LIMIT_S,
        redelivery_timeout_s=RELIABILITY_REDELIVERY_S,
    )
    found: set[str] = set()

    async def record(job: Job) -> None:
        found.add(job.id)

    async def sweep() -> None:
        redis = AsyncRedis.from_url(chaos.stack.redis_url)
        try:
            keys = chaos.stack.keys
            sweeper = OrphanSweeper(
                JobStore(redis, keys, settings.job_ttl_s),
                queue_names=[keys.caption_queue(), keys.bulk_queue()],
                requeue=record,
                quiet_s=visibility_timeout_s(settings),
                vouch_s=restored_within_s(settings),
                recheck_s=0.5,  # ten registry writes apart; the tarpit's jobs time out after 10 s
            )
            sweeper.started_s -= 3_600  # a sweeper long up: only the entries' age counts
            await sweeper.sweep()
        finally:
            await redis.aclose()

    asyncio.run(sweep())
    return found


def test_the_sweep_leaves_a_dead_workers_chunks_to_kombu_and_queues_a_lost_job_again(
    chaos: Chaos, image_server: HostileServer
) -> None:
    run = uuid.uuid4().hex
    tarpit = image_server.tarpit(run)
    shape = image_server.url("/image/shape.png")
    sender = ChunkSender(chaos.stack.redis_url, chaos.stack.keys.prefix)
    # Queued a minute ago, as a backlog would have them: older than the redelivery timeout (12 s) before
    # a worker even takes them, so a sweep looks at them while their messages are held.
    backlog = {"created_at": utc_now() - timedelta(seconds=60)}
    try:
        # Every job hangs at the tarpit. Whichever three chunks' bodies reach the room first (pool threads
        # start in no set order on a loaded machine) fill the bulk images in hand (3 x 8; each image leaves
        # the room only as its job ends) and hang, 8 at the tarpit (its host's connection slots) and 16
        # waiting for a slot; the other chunks the worker holds (worker.broker.bulk_flow bounds them) wait,
        # their jobs still queued, for room.
        held = max_chunks_held(items_in_hand=3 * 8, batch_size=8, pool_threads=RELIABILITY_WORKER_THREADS)
        chunks = [sender.store([image_server.url(f"/tarpit/{run}")] * 8, **backlog) for _ in range(held)]
        queued_ids = [job_id for chunk in chunks for job_id in chunk]
        sender.send_chunks(queued_ids, chunk_size=8)

        def unended(chunk: list[str]) -> bool:
            return chaos.count_in(chunk, "succeeded", "failed") < len(chunk)

        def holding_all() -> bool:
            # A hanging job times out after 10 s and its chunk ends, so those chunks are left out.
            live = [job_id for chunk in chunks if unended(chunk) for job_id in chunk]
            return tarpit.open == CONNECTIONS_PER_HOST and len(live) > 3 * 8 and set(live) <= held_in_registry(chaos)

        with chaos.supervise():
            wait_until(
                holding_all,
                timeout_s=90,
                what=lambda: (
                    f"the worker holding all {held} chunks it may, {CONNECTIONS_PER_HOST} at the tarpit; tarpit open "
                    f"{tarpit.open}, {len(set(queued_ids) - held_in_registry(chaos))} jobs not held, "
                    f"{chaos.status_counts(queued_ids)}"
                ),
            )
            # Stored, never queued: an API killed between storing a job and sending its task.
            lost = sender.store([shape], **backlog)
            # Held by a live worker, then by a dead one whose messages kombu has not restored yet: the
            # registry accounts for the waiting jobs both times, so only the lost job is an orphan.
            assert sweep_now(chaos) <= set(lost)
            chaos.kill_worker()
            # The chunks held, not started, when the worker died: all but the three in hand (and any that
            # entered after one of those timed out).
            waiting = [job_id for chunk in chunks if chaos.count_in(chunk, "queued") == len(chunk) for job_id in chunk]
            assert len(waiting) >= 8
            assert sweep_now(chaos) <= set(lost)
            tarpit.release()
            job_ids = [*lost, *queued_ids]
            jobs = chaos.wait_all_final(job_ids, timeout_s=150)
    finally:
        sender.close()
    # The workers' own sweeps queued only the lost job again; every waiting job ran once, after kombu put
    # its chunk back.
    requeued = {record["job_id"] for record in chaos.log_events("worker", "orphaned job queued again")} & set(job_ids)
    assert requeued == set(lost)
    assert all(jobs[job_id].status is JobStatus.SUCCEEDED and jobs[job_id].attempts == 1 for job_id in waiting)
    assert jobs[lost[0]].status is JobStatus.SUCCEEDED
    ended = Counter(record["job_id"] for record in chaos.log_events("worker", "job ended"))
    assert max(ended[job_id] for job_id in job_ids) == 1
