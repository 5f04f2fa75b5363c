"""Batch chunks on the real stack: every item captioned once, interactive jobs first, slow hosts and keys fenced off.

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
from shared.batches import item_job_id
from shared.jobs import JobStatus
from tests.integration.chaos import Chaos, wait_until
from tests.servers import HostileServer
from tests.stack import STACK_BATCH_SIZE, STACK_FETCHES_PER_KEY, STACK_WORKER_THREADS, TENANT_A_KEY, TENANT_B_KEY
from worker.bulk_flow import max_chunks_held

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
    # The worker holds only a few chunks beyond those in hand (worker.bulk_flow), so a quarter of its
    # threads or more are free: an acknowledgement may trail the next chunk's delivery by one.
    assert chaos_of.redis.hlen(KOMBU_UNACKED_KEY) <= max_chunks_held(**FLOW) + 1
    single = chaos_of.submit(image_url=image_server.url("/image/shape.png"), max_new_tokens=5)
    wait_until(lambda: chaos_of.count_in([single], "succeeded") == 1, timeout_s=120, what="the single job to end")
    assert chaos_of.redis.hlen(KOMBU_UNACKED_KEY) <= max_chunks_held(**FLOW) + 1
    mine = chaos_of.jobs([single])[single]
    bulk = chaos_of.wait_all_final(ids, timeout_s=300)
    assert mine.started_at is not None and mine.finished_at is not None
    # Bulk items that began after the single job was posted and before it began: at most the worker's
    # share of chunks (worker.bulk_flow), never the backlog in Redis. It never waits for a chunk to free
    # a pool thread (the share leaves threads free); it waits for the worker's event loop, busy with the
    # images in hand, so on a loaded machine a few chunks may start meanwhile.
    started_ahead = [job for job in bulk.values() if _between(job.started_at, mine.created_at, mine.started_at)]
    assert len(started_ahead) <= max_chunks_held(**FLOW) * STACK_BATCH_SIZE
    # Once started: the batch generating then, one that may start while its image is fetched, and the
    # bulk images sharing its own batch; never the backlog.
    ended_while_running = [job for job in bulk.values() if _between(job.finished_at, mine.started_at, mine.finished_at)]
    assert len(ended_while_running) <= 3 * STACK_BATCH_SIZE
    still_waiting = [job for job in bulk.values() if job.started_at is not None and job.started_at > mine.finished_at]
    assert still_waiting, "the backlog was gone before the single job ran: the test proved nothing"
    assert {job.status for job in bulk.values()} == {JobStatus.SUCCEEDED}


def test_jobs_on_a_tarpit_host_leave_the_worker_free_for_others(
    chaos_of: Chaos, api: httpx.Client, image_server: HostileServer
) -> None:
    tarpit = image_server.tarpit("worker-test")
    # More hanging jobs than the old pool had threads (2 x batch); fewer than the worker has now. Two keys,
    # so their fetch shares together (2 x 6) pass the host's 8 and the host's fence is the one that holds.
    url = image_server.url("/tarpit/worker-test")
    slow = [submit_as(api, key, image_url=url) for key in (TENANT_A_KEY, TENANT_B_KEY) for _ in range(10)]
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


def test_a_key_s_batch_on_a_tarpit_host_holds_only_its_fetch_share_and_another_key_fetches_from_that_host(
    chaos_of: Chaos, api: httpx.Client, image_server: HostileServer
) -> None:
    tarpit = image_server.tarpit("owner-test")
    # Tenant A's batch: more items than its fetch share, all on one host that never answers.
    items = [{"image_url": image_server.url("/tarpit/owner-test")} for _ in range(2 * STACK_FETCHES_PER_KEY)]
    created = api.post("/v1/batches", json={"items": items}, headers=_bearer(TENANT_A_KEY))
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]
    a_jobs = [item_job_id(batch_id, index) for index in range(len(items))]
    try:
        wait_until(lambda: chaos_of.count_in(a_jobs, "running") == len(a_jobs), timeout_s=60, what="A's items running")
        wait_until(
            lambda: tarpit.open == STACK_FETCHES_PER_KEY,
            timeout_s=60,
            what=lambda: f"{STACK_FETCHES_PER_KEY} requests hanging, not {tarpit.open}",
        )
        # Tenant B fetches from the very same host: A's share (6) leaves room under the host's fence (8),
        # where without it A's hanging requests would take all 8 and B's would queue behind them.
        other = submit_as(api, TENANT_B_KEY, image_url=image_server.url("/image/shape.png"))
        wait_until(lambda: chaos_of.count_in([other], "succeeded") == 1, timeout_s=60, what="B's job")
        assert chaos_of.count_in(a_jobs, "running") == len(a_jobs)
        assert tarpit.max_open == STACK_FETCHES_PER_KEY
    finally:
        tarpit.release()
    # Read through the batch: once it ends, its item records are compacted away.
    url = f"/v1/batches/{batch_id}"
    wait_until(
        lambda: api.get(url, headers=_bearer(TENANT_A_KEY)).json()["status"] == "completed",
        timeout_s=120,
        what="A's batch to complete",
    )
    assert api.get(url, headers=_bearer(TENANT_A_KEY)).json()["counts"]["succeeded"] == len(items)


def submit_as(api: httpx.Client, key: str, **body: object) -> str:
    """POST a job with tenant ``key``; returns its id."""
    response = api.post("/v1/jobs", json=body, headers=_bearer(key))
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _between(moment: object, after: object, before: object) -> bool:
    return moment is not None and after < moment < before  # type: ignore[operator]
