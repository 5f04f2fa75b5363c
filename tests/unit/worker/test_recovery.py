"""The delivery gate (a redelivered, suspect job runs alone) and the orphan sweep over queues and the registry."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import fakeredis.aioredis
import pytest
from PIL import Image

from shared.jobs.model import Job, JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.fakes import FakeCaptioner
from worker.captioning.batching import Batcher
from worker.captioning.pipeline import JobRunner
from worker.intake.images import ImageBytes, decode_image
from worker.recovery.redelivery import DeliveryGate, NotAdmittedError, OrphanSweeper, job_ids_in_message
from worker.recovery.running_jobs import RunningJobs


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


async def hold(gate: DeliveryGate, suspect: bool, log: list[str], name: str, release: asyncio.Event) -> None:
    async with gate.admit(suspect=suspect, timeout_s=5):
        log.append(f"+{name}")
        await release.wait()
        log.append(f"-{name}")


async def settle() -> None:
    """Let every runnable task run until it blocks again."""
    for _ in range(20):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


def test_ordinary_jobs_run_together() -> None:
    async def scenario() -> None:
        gate, log, release = DeliveryGate(), [], asyncio.Event()
        tasks = [asyncio.create_task(hold(gate, False, log, name, release)) for name in "abc"]
        await settle()
        assert gate.running == 3 and sorted(log) == ["+a", "+b", "+c"]
        release.set()
        await asyncio.gather(*tasks)

    run(scenario)


def test_a_suspect_waits_for_the_running_jobs_and_holds_back_new_ones() -> None:
    async def scenario() -> None:
        gate, log = DeliveryGate(), []
        first, suspect_done, late_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        ordinary = asyncio.create_task(hold(gate, False, log, "a", first))
        await settle()
        suspect = asyncio.create_task(hold(gate, True, log, "s", suspect_done))
        await settle()
        late = asyncio.create_task(hold(gate, False, log, "b", late_done))
        await settle()
        assert log == ["+a"]  # the suspect waits for a; b waits behind the suspect
        first.set()
        await until(lambda: "+s" in log)
        await settle()
        assert log == ["+a", "-a", "+s"] and gate.running == 1
        suspect_done.set()
        await until(lambda: "+b" in log)
        assert log == ["+a", "-a", "+s", "-s", "+b"]
        late_done.set()
        await asyncio.gather(ordinary, suspect, late)

    run(scenario)


def test_suspects_run_one_at_a_time() -> None:
    async def scenario() -> None:
        gate, log, release = DeliveryGate(), [], asyncio.Event()
        tasks = [asyncio.create_task(hold(gate, True, log, name, release)) for name in "st"]
        await settle()
        assert log == ["+s"]
        release.set()
        await asyncio.gather(*tasks)
        assert log == ["+s", "-s", "+t", "-t"]

    run(scenario)


def test_a_suspect_that_waits_too_long_gives_up_and_lets_others_in() -> None:
    async def scenario() -> None:
        gate, log, release = DeliveryGate(), [], asyncio.Event()
        busy = asyncio.create_task(hold(gate, False, log, "a", release))
        await settle()
        with pytest.raises(NotAdmittedError):
            async with gate.admit(suspect=True, timeout_s=0.05):
                pytest.fail("admitted while another job ran")
        async with gate.admit(suspect=False, timeout_s=0.05):
            assert gate.running == 2
        release.set()
        await busy
        assert gate.running == 0

    run(scenario)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (220, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_a_redelivered_job_is_captioned_alone_after_the_running_batch() -> None:
    model = FakeCaptioner(held=True)
    settings = Settings(key_prefix="t", job_time_limit_s=10)

    async def scenario() -> None:
        store = JobStore(fakeredis.aioredis.FakeRedis(), Keys("t"), ttl_s=600)
        batcher = Batcher(
            lambda images, prompt, limits: model.caption(list(images)), max_batch_size=8, max_wait_s=0.01
        )  # fmt: skip
        batcher.start()

        async def fetch(url: str) -> ImageBytes:
            return ImageBytes.of(_png())

        async def on_event(job: Job, status: JobStatus) -> None:
            pass

        runner = JobRunner(
            settings, store, batcher, fetch=fetch, prepare=lambda data: asyncio.to_thread(decode_image, data, settings, model_input_px=model.input_size_px),
            model_name="fake", on_event=on_event,
        )  # fmt: skip
        for job_id in ("job_ordinary", "job_survivor"):
            await store.create(Job(id=job_id, image_url="http://img.test/red.png"))
        assert await store.transition("job_survivor", JobStatus.RUNNING)  # its worker died mid-job
        try:
            ordinary = asyncio.create_task(runner.run("job_ordinary"))
            await asyncio.to_thread(model.started.wait, 5)
            survivor = asyncio.create_task(runner.run("job_survivor"))
            await settle()
            assert (await store.get("job_survivor")).attempts == 1  # type: ignore[union-attr]
            model.release()
            assert await ordinary is JobStatus.SUCCEEDED
            assert await survivor is JobStatus.SUCCEEDED
            assert (await store.get("job_survivor")).attempts == 2  # type: ignore[union-attr]
            assert model.batches == [1, 1]
        finally:
            await batcher.stop()

    run(scenario)


# --- the orphan sweeper ------------------------------------------------------------------


def _message(job_id: str | list[str]) -> bytes:
    """A task message as kombu stores it (abridged): Celery's protocol 2 body ``[args, kwargs, embed]`` in base64.

    A list of ids is a chunk message, whose ``argsrepr`` header Celery truncates.
    """
    task = "captionizer.caption_chunk" if isinstance(job_id, list) else "captionizer.caption"
    headers = {"task": task, "id": "a-celery-task-id", "argsrepr": repr([job_id])[:40]}
    body = base64.b64encode(json.dumps([[job_id], {}, {"callbacks": None}]).encode()).decode()
    return json.dumps({"body": body, "headers": headers, "properties": {"body_encoding": "base64"}}).encode()


#: The sweeper's quiet period and the registry's vouching period in these tests (redelivery timeout 60 s).
QUIET_S, VOUCH_S = 60.0, 72.0


def sweep_with(
    held: dict[str, str],
    ages_s: dict[str, float],
    statuses: dict[str, JobStatus],
    chunked: tuple[str, ...] = (),
    up_s: float = 3_600,
) -> list[str]:
    """Create jobs queued ``ages_s`` ago, put them where ``held`` says, sweep once with a sweeper up ``up_s``.

    ``held`` values: ``queue`` (a message waiting), ``worker`` (held by a worker now), or
    ``held:<s>`` (an entry written that many seconds ago by a worker that then died).
    """
    requeued: list[str] = []

    async def scenario() -> None:
        redis = fakeredis.aioredis.FakeRedis()
        store = JobStore(redis, Keys("t"), ttl_s=600)
        now = 1_000_000.0
        for job_id, age_s in ages_s.items():
            await store.create(Job(id=job_id, image_url="http://img.test/a.png", created_at=_at(now - age_s)))
            if statuses.get(job_id, JobStatus.QUEUED) is not JobStatus.QUEUED:
                assert await store.transition(job_id, statuses[job_id])
        for job_id, where in held.items():
            if where == "queue":
                await redis.lpush("t-captions", _message(job_id))
            else:
                written = _fixed(now - float(where.partition(":")[2] or 0))
                registry = RunningJobs(redis, Keys("t"), f"host:1:{job_id}", vouch_s=VOUCH_S, clock=written)
                registry.hold([job_id])
                await registry.flush()
        if chunked:
            await redis.lpush("t-captions-bulk", _message(list(chunked)))
            await redis.lpush("t-captions-bulk", b"not a task message")

        async def requeue(job: Job) -> None:
            requeued.append(job.id)

        sweeper = OrphanSweeper(
            store, queue_names=["t-captions", "t-captions-bulk"], requeue=requeue, quiet_s=QUIET_S, vouch_s=VOUCH_S,
            recheck_s=0, clock=lambda: now,
        )  # fmt: skip
        sweeper.started_s = now - up_s
        assert await sweeper.sweep() == requeued
        # Queued again now: the next sweep leaves them alone for another quiet period.
        assert await sweeper.sweep() == []

    run(scenario)
    return requeued


def _fixed(epoch_s: float) -> Callable[[], float]:
    return lambda: epoch_s


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


JOB_IDS = [f"job_{letter * 22}" for letter in "abcdef"]


def test_a_long_queued_job_with_no_message_anywhere_is_queued_again() -> None:
    lost, waiting, held = JOB_IDS[:3]
    assert sweep_with({waiting: "queue", held: "worker"}, {lost: 120, waiting: 120, held: 120}, {}) == [lost]


def test_a_dead_workers_jobs_are_left_to_kombu_until_it_has_restored_them() -> None:
    restoring, restored_then_lost = JOB_IDS[:2]
    # Held 70 s ago: kombu may not have restored it yet. Held 80 s ago: kombu has, so it is lost again.
    held = {restoring: "held:70", restored_then_lost: "held:80"}
    assert sweep_with(held, {restoring: 300, restored_then_lost: 300}, {}) == [restored_then_lost]


def test_a_sweeper_up_for_less_than_the_vouching_time_trusts_every_entry() -> None:
    # Every worker was down, so nobody has restored the old message yet; this worker's kombu will.
    old, lost = JOB_IDS[:2]
    assert sweep_with({old: "held:3000"}, {old: 3600, lost: 3600}, {}, up_s=VOUCH_S - 1) == [lost]


def test_every_job_of_a_chunk_waiting_in_the_bulk_queue_counts_as_held() -> None:
    lost, *chunk = JOB_IDS
    assert sweep_with({}, dict.fromkeys(JOB_IDS, 120.0), {}, chunked=tuple(chunk)) == [lost]


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b"{}", b"not json", b'{"body": "!!!", "properties": {"body_encoding": "base64"}}', b'{"body": 3}'],
)
def test_a_message_that_is_not_a_task_names_no_job(raw: bytes) -> None:
    assert job_ids_in_message(raw) == []


def test_recent_and_no_longer_queued_jobs_are_left_alone() -> None:
    recent, started, done = JOB_IDS[3:6]
    ages = {recent: 10, started: 120, done: 120}
    assert sweep_with({}, ages, {started: JobStatus.RUNNING, done: JobStatus.CANCELED}) == []
