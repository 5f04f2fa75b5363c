"""The caption service: model loaded once at worker start (never for webhook-only workers), pool sized, jobs run."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Reject
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis
from PIL import Image

import worker.runtime
from shared.celery_config import celery_config
from shared.jobs import Job, JobStatus
from shared.keys import Keys
from shared.settings import Settings
from shared.store import JobStore
from tests.fakes import FakeCaptioner, fake_caption
from worker.tasks import THREADS_PER_BATCH, CaptionService


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


def test_a_caption_worker_loads_once_sizes_its_pool_and_runs_jobs(settings: Settings, server: FakeServer) -> None:
    loads: list[Settings] = []

    def load(s: Settings) -> Any:
        loads.append(s)
        return FakeCaptioner()

    service = CaptionService(celery_consuming(settings, Keys().caption_queue()), settings, load_model=load)
    pool = SimpleNamespace(pool_cls="prefork", concurrency=1)
    service.on_worker_init(sender=pool)
    try:
        assert len(loads) == 1 and service.runtime is not None
        assert (pool.pool_cls, pool.concurrency) == ("threads", THREADS_PER_BATCH * 4)
        heartbeat = Keys().worker_heartbeat(service.runtime.worker_id)
        job = Job(id="job_upload_1", source="upload")
        image = Image.new("RGB", (20, 10))
        asyncio.run(_create(server, job, image))
        service.run(job.id)
        done = asyncio.run(_get(server, job.id))
        assert done is not None and done.status is JobStatus.SUCCEEDED
        assert done.caption == fake_caption(image) and done.model == "fake"
        assert asyncio.run(_exists(server, heartbeat))
    finally:
        service.on_worker_shutdown()
    assert service.runtime is None
    assert not asyncio.run(_exists(server, heartbeat))


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
