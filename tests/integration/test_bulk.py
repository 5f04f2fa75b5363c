"""Batch chunks on the real stack: every item captioned once, interactive jobs first, slow hosts fenced off.

Chunks are sent straight to the bulk queue through ``shared/`` (:class:`scripts.chunks.ChunkSender`), as
the batch API does; single jobs go through ``POST /v1/jobs``. Order is asserted on the jobs' recorded
start and end times, never on how long anything took.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scripts.chunks import ChunkSender
from scripts.stack import LocalStack
from shared.jobs.model import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.servers import HostileServer
from tests.stack import STACK_BATCH_SIZE, STACK_WORKER_THREADS
from worker.broker.bulk_flow import max_chunks_held

pytestmark = pytest.mark.slow
#: kombu's Redis transport keeps the messages workers hold in this hash (read here only to count them).
KOMBU_UNACKED_KEY = "unacked"
#: The shared stack's worker: three batches in hand (the default), STACK_WORKER_THREADS pool threads.
FLOW = {"items_in_hand": 3 * STACK_BATCH_SIZE, "batch_size": STACK_BATCH_SIZE, "pool_threads": STACK_WORKER_THREADS}


@pytest.fixture
def sender(stack: LocalStack) -> Iterator[ChunkSender]:
    chunk_sender = ChunkSender(stack.redis_url, stack.keys.prefix)
    try:
        yield chunk_sender
    finally:
        chunk_sender.close()


@pytest.fixture
def chaos_of(stack: LocalStack, api: httpx.Client) -> Iterator[Chaos]:
    """Job reads straight from Redis (no restarts: this is the shared stack)."""
    handle = Chaos(stack, api)
    try:
        yield handle
    finally:
        handle.close()


def test_every_item_of_every_chunk_is_captioned_once(
    sender: ChunkSender, chaos_of: Chaos, image_server: HostileServer
) -> None:
    ids = sender.store([image_server.url("/image/shape.png")] * 40, max_new_tokens=5)
    # Chunks of uneven sizes, one with an id twice and one with an id that does not exist.
    sender.send_chunks(ids[:25], chunk_size=STACK_BATCH_SIZE)
    sender.app.send_task("captionizer.caption_chunk", args=[[*ids[25:], ids[30], "job_missing_0000000000000000"]],
                         queue=sender.keys.bulk_queue())  # fmt: skip
    jobs = chaos_of.wait_all_final(ids, timeout_s=120)
    assert {job.status for job in jobs.values()} == {JobStatus.SUCCEEDED}
    assert all(job.attempts == 1 and job.caption for job in jobs.values())


def test_a_single_job_posted_under_bulk_load_goes_ahead_of_the_bulk_backlog(
    sender: ChunkSender, chaos_of: Chaos, api: httpx.Client, image_server: HostileServer
) -> None:
    # More chunks than the worker has threads: most wait in Redis, a few in the worker's hands.
    items = (STACK_WORKER_THREADS + 8) * STACK_BATCH_SIZE
    ids = sender.store([image_server.url("/image/shape.png")] * items, max_new_tokens=5)
    sender.send_chunks(ids, chunk_size=STACK_BATCH_SIZE)
    wait_until(lambda: chaos_of.count_in(ids, "succeeded") >= 2 * STACK_BATCH_SIZE, timeout_s=120, what="bulk underway")
    # The worker holds only a few chunks beyond those in hand (worker.broker.bulk_flow), so a quarter of its
    # threads or more are free. kombu's unacked hash also keeps, for a moment, the chunks that just ended
    # (Celery acknowledges after task_postrun, which frees their place) and one message in flight: at
    # most twice the share plus one, whatever the machine's load, and still short of the backlog.
    most_unacked = 2 * max_chunks_held(**FLOW) + 1
    assert most_unacked < STACK_WORKER_THREADS + 8
    assert chaos_of.redis.hlen(KOMBU_UNACKED_KEY) <= most_unacked
    single = chaos_of.submit(image_url=image_server.url("/image/shape.png"), max_new_tokens=5)
    wait_until(lambda: chaos_of.count_in([single], "succeeded") == 1, timeout_s=120, what="the single job to end")
    assert chaos_of.redis.hlen(KOMBU_UNACKED_KEY) <= most_unacked
    mine = chaos_of.jobs([single])[single]
    bulk = chaos_of.wait_all_final(ids, timeout_s=300)
    assert mine.started_at is not None and mine.finished_at is not None
    # Bulk items that began after the single job was posted and before it began: at most the worker's
    # share of chunks (worker.broker.bulk_flow), never the backlog in Redis. It never waits for a chunk to free
    # a pool thread (the share leaves threads free); it waits for the worker's event loop, busy with the
    # images in hand, so on a loaded machine a few chunks may start meanwhile.
    started_ahead = [job for job in bulk.values() if _between(job.started_at, mine.created_at, mine.started_at)]
    # (The share, plus the one chunk a fetch already under way when the consumer stopped may bring.)
    assert len(started_ahead) <= (max_chunks_held(**FLOW) + 1) * STACK_BATCH_SIZE
    # Once started: the batch generating then, one that may start while its image is fetched, and the
    # bulk images sharing its own batch; never the backlog.
    ended_while_running = [job for job in bulk.values() if _between(job.finished_at, mine.started_at, mine.finished_at)]
    assert len(ended_while_running) <= 3 * STACK_BATCH_SIZE
    still_waiting = [job for job in bulk.values() if job.started_at is not None and job.started_at > mine.finished_at]
    assert still_waiting, "the backlog was gone before the single job ran: the test proved nothing"
    assert {job.status for job in bulk.values()} == {JobStatus.SUCCEEDED}


def test_jobs_on_a_tarpit_host_leave_the_worker_free_for_others(chaos_of: Chaos, image_server: HostileServer) -> None:
    tarpit = image_server.tarpit("worker-test")
    # More hanging jobs than the old pool had threads (2 x batch); fewer than the worker has now.
    slow = [chaos_of.submit(image_url=image_server.url("/tarpit/worker-test")) for _ in range(20)]
    try:
        wait_until(lambda: chaos_of.count_in(slow, "running") == len(slow), timeout_s=60, what="tarpit jobs running")
        # One host holds a bounded share of the fetches: the rest of its jobs wait their turn.
        wait_until(lambda: tarpit.open == 8, timeout_s=60, what=lambda: f"8 requests hanging, not {tarpit.open}")
        # The same server under another name: another host, with its own share.
        normal = chaos_of.submit(image_url=image_server.url("/image/shape.png", host="localhost"))
        wait_until(lambda: chaos_of.count_in([normal], "succeeded") == 1, timeout_s=60, what="the normal job")
        assert chaos_of.count_in(slow, "running") == len(slow)
        assert tarpit.max_open == 8
    finally:
        tarpit.release()
    jobs = chaos_of.wait_all_final(slow, timeout_s=120)
    assert {job.status for job in jobs.values()} == {JobStatus.SUCCEEDED}


def _between(moment: object, after: object, before: object) -> bool:
    return moment is not None and after < moment < before  # type: ignore[operator]
