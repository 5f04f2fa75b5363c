"""The caption service: model loaded once at worker start (never for webhook-only workers), the threads pool
required and -c respected, the caption queue consumed before the bulk queue, jobs and chunks run."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

import click
import pytest
from celery import Celery
from celery.exceptions import Reject
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from PIL import Image

import worker.runtime
from shared.broker.config import celery_config
from shared.jobs.model import Job, JobStatus
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from tests.fakes import FakeCaptioner, fake_caption
from worker.tasks import CaptionService, UnsupportedPoolError


@pytest.fixture
def settings() -> Settings:
    return Settings(key_prefix="captionizer", worker_metrics_port=0, max_batch_size=4)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Every Redis client the runtime makes talks to this fake server."""
    fake = FakeServer()
    monkeypatch.setattr(worker.runtime, "Redis", SimpleNamespace(from_url=lambda *a, **k: FakeRedis(server=fake)))
    return fake


def celery_consuming(settings: Settings, *queues: str) -> Celery:
    app = Celery("test", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.amqp.queues.select(list(queues))
    return app


def test_a_webhook_only_worker_never_loads_the_model(settings: Settings) -> None:
    loads: list[Settings] = []

    def load(s: Settings) -> Any:
        loads.append(s)
        return FakeCaptioner()

    service = CaptionService(celery_consuming(settings, Keys().webhook_queue()), settings, load_model=load)
    pool = SimpleNamespace(pool_cls="prefork", concurrency=4)
    service.on_worker_init(sender=pool)
    assert loads == [] and service.runtime is None
    assert (pool.pool_cls, pool.concurrency) == ("prefork", 4)
    with pytest.raises(Reject):
        service.run("job_x")


def test_a_caption_worker_loads_once_keeps_its_concurrency_and_runs_jobs_and_chunks(
    settings: Settings, server: FakeServer
) -> None:
    loads: list[Settings] = []

    def load(s: Settings) -> Any:
        loads.append(s)
        return FakeCaptioner()

    app = celery_consuming(settings, Keys().caption_queue())
    service = CaptionService(app, settings, load_model=load)
    # No click context: nobody asked for a pool, so the caption worker picks threads; -c is kept.
    pool = SimpleNamespace(pool_cls="prefork", concurrency=7)
    service.on_worker_init(sender=pool)
    try:
        assert len(loads) == 1 and service.runtime is not None
        assert (pool.pool_cls, pool.concurrency) == ("threads", 7)
        assert list(app.amqp.queues.consume_from) == [Keys().caption_queue(), Keys().bulk_queue()]
        heartbeat = Keys().worker_heartbeat(service.runtime.worker_id)
        images = {f"job_upload_{n}": Image.new("RGB", (20 + n, 10)) for n in range(4)}
        for job_id, image in images.items():
            asyncio.run(_create(server, Job(id=job_id, source="upload"), image))
        service.run("job_upload_0")
        service.run_chunk(["job_upload_1", "job_upload_2", "job_upload_0", "job_upload_3"])
        for job_id, image in images.items():
            done = asyncio.run(_get(server, job_id))
            assert done is not None and done.status is JobStatus.SUCCEEDED
            assert done.caption == fake_caption(image) and done.model == "fake"
            # job_upload_0 was final when its chunk came: skipped, not run twice.
            assert done.attempts == 1
        assert asyncio.run(_exists(server, heartbeat))
    finally:
        service.on_worker_shutdown()
    assert service.runtime is None
    assert not asyncio.run(_exists(server, heartbeat))


def test_the_bulk_queue_is_consumed_after_the_caption_queue_whatever_the_order_given(settings: Settings) -> None:
    app = celery_consuming(settings, Keys().bulk_queue(), Keys().caption_queue())
    service = CaptionService(app, settings, load_model=lambda s: FakeCaptioner())
    service.on_worker_init(sender=SimpleNamespace(pool_cls="threads", concurrency=4))
    try:
        assert list(app.amqp.queues.consume_from) == [Keys().caption_queue(), Keys().bulk_queue()]
    finally:
        service.on_worker_shutdown()


def test_a_caption_worker_asked_for_the_prefork_pool_refuses_to_start(settings: Settings) -> None:
    loads: list[Settings] = []
    command = click.Command("worker", params=[click.Option(["-P", "--pool"], default="prefork")])
    service = CaptionService(
        celery_consuming(settings, Keys().caption_queue()), settings, load_model=lambda s: loads.append(s)
    )
    with click.Context(command) as context:
        context.params["pool"] = "prefork"
        context.set_parameter_source("pool", click.core.ParameterSource.COMMANDLINE)
        with pytest.raises(UnsupportedPoolError, match="-P threads"):
            service.on_worker_init(sender=SimpleNamespace(pool_cls="prefork", concurrency=4))
    assert loads == [] and service.runtime is None


def test_a_malformed_chunk_message_is_dropped_without_running_anything(settings: Settings) -> None:
    service = CaptionService(celery_consuming(settings, Keys().caption_queue()), settings)
    service.run_chunk("job_not_a_list")  # type: ignore[arg-type]
    assert service.runtime is None


async def _create(server: FakeServer, job: Job, image: Image.Image) -> None:
    data = io.BytesIO()
    image.save(data, "PNG")
    async with FakeRedis(server=server) as redis:
        await JobStore(redis, Keys(), 600).create(job, upload=data.getvalue())


async def _get(server: FakeServer, job_id: str) -> Job | None:
    async with FakeRedis(server=server) as redis:
        return await JobStore(redis, Keys(), 600).get(job_id)


async def _exists(server: FakeServer, key: str) -> bool:
    async with FakeRedis(server=server) as redis:
        return bool(await redis.exists(key))
