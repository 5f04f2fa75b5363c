"""The FastAPI application: ``create_app(settings)`` wires Redis, the job store, the queue and the routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api.batch_closer import BatchCloser
from api.batches import BatchSubmitter
from api.job_events import JobEvents
from api.problems import install_problem_handlers
from api.queue import TaskQueue
from api.routes import batches, caption, health, jobs
from api.routes.pages import register_pages
from api.security import install_security
from api.submission import JobSubmitter
from shared.batch_store import BatchStore
from shared.keys import Keys
from shared.settings import Settings
from shared.store import JobStore

_DESCRIPTION = """Alt text and captions for images with Microsoft's GIT model.

Submit an image with `POST /v1/jobs` (a URL, base64, or a multipart upload), then read
`GET /v1/jobs/{id}` (add `?wait=30` to long-poll until it ends). Errors are RFC 9457
`application/problem+json` bodies with a stable `code`.
"""
# Seconds to connect to Redis before answering 503 queue_unavailable.
_REDIS_CONNECT_TIMEOUT_S = 2.0
# Seconds a Redis command may take; the pub/sub client has none, as it blocks on purpose.
_REDIS_COMMAND_TIMEOUT_S = 5.0


def create_app(settings: Settings) -> FastAPI:
    """Build the API for ``settings``; connections open lazily and close with the app's lifespan."""
    keys = Keys(settings.key_prefix)
    redis = Redis.from_url(
        settings.redis_url, socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S, socket_timeout=_REDIS_COMMAND_TIMEOUT_S
    )
    events_redis = Redis.from_url(settings.redis_url, socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S)
    store = JobStore(redis, keys, settings.job_ttl_s)
    queue = TaskQueue(settings)
    job_events = JobEvents(events_redis, keys)
    batch_store = BatchStore(redis, keys, settings.job_ttl_s)
    batch_closer = BatchCloser(redis, keys, batch_store, queue.send_task)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        job_events.start()
        batch_closer.start()
        try:
            yield
        finally:
            await batch_closer.stop()
            await job_events.stop()
            queue.close()
            await events_redis.aclose()
            await redis.aclose()

    app = FastAPI(title="Captionizer", version="0.1.0", description=_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.redis = redis
    app.state.store = store
    app.state.queue = queue
    app.state.job_events = job_events
    app.state.submitter = JobSubmitter(settings, store, queue)
    app.state.batch_store = batch_store
    app.state.batch_submitter = BatchSubmitter(settings, app.state.submitter, store, batch_store, queue.send_task)
    install_problem_handlers(app)
    install_security(app, settings, redis)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(caption.router)
    app.include_router(health.router)
    register_pages(app)
    return app
