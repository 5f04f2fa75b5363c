"""The FastAPI application: ``create_app(settings)`` wires Redis, the job store, the queue and the routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from api.admission import Admission
from api.batches.closer import BatchCloser
from api.batches.service import BatchSubmitter
from api.broker.publisher import TaskQueue
from api.http.auth import KeyRing
from api.http.openapi import install_openapi, operation_id
from api.http.problems import install_problem_handlers
from api.http.ratelimit import RateLimiter, RateLimitHeadersMiddleware
from api.http.security import install_security
from api.jobs.events import JobEvents
from api.routes import batches, caption, health, jobs, limits, webhooks
from api.routes.docs import register_docs
from api.routes.pages import register_pages
from api.services import Services
from shared.batches.store import BatchStore
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.redis_packing import pack_with_hiredis
from shared.settings import Settings

logger = logging.getLogger(__name__)

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
    """Build the API for ``settings``; connections open lazily and close with the app's lifespan.

    Raises:
        ValueError: ``api_key_hashes_file`` holds something that is not a digest.
    """
    services = build_services(settings)
    # docs_url/redoc_url off: FastAPI's pages load from a CDN; register_docs serves them offline.
    app = FastAPI(
        title="Captionizer",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=_lifespan(services),
        generate_unique_id_function=operation_id,
        docs_url=None,
        redoc_url=None,
    )
    # The one thing put on app.state; api.deps is the only reader.
    app.state.services = services
    install_problem_handlers(app)
    # Innermost of the middlewares: answers refused by the outer ones (413, 403) spent no budget.
    app.add_middleware(RateLimitHeadersMiddleware, policies=(services.rate_limiter, services.read_rate_limiter))
    install_security(app, settings)
    for module in (jobs, batches, limits, caption, health, webhooks):
        app.include_router(module.router)
    register_pages(app)
    register_docs(app)
    install_openapi(app, max_wait_s=settings.max_wait_s)
    return app


def _lifespan(services: Services) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the background listeners with the app, and close every client when it stops."""
    events_redis = services.job_events.redis

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.job_events.start()
        services.batch_closer.start()
        try:
            yield
        finally:
            await services.batch_closer.stop()
            await services.job_events.stop()
            services.queue.close()
            await events_redis.aclose()
            await services.redis.aclose()

    return lifespan


def build_services(settings: Settings) -> Services:
    """The clients and components of one app; nothing connects until first used."""
    keys = Keys(settings.key_prefix)
    redis = pack_with_hiredis(
        Redis.from_url(
            settings.redis_url, socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S, socket_timeout=_REDIS_COMMAND_TIMEOUT_S
        )
    )
    events_redis = pack_with_hiredis(
        Redis.from_url(settings.redis_url, socket_connect_timeout=_REDIS_CONNECT_TIMEOUT_S)
    )
    store = JobStore(redis, keys, settings.job_ttl_s)
    queue = TaskQueue(settings, redis)
    key_ring = KeyRing.from_settings(settings)
    if not len(key_ring) and not settings.allow_anonymous:
        logger.warning("no API keys configured and allow_anonymous is off: every job request will get 401")
    admission = Admission(settings, store, queue)
    batch_store = BatchStore(redis, keys, settings.job_ttl_s)
    return Services(
        settings=settings,
        keys=keys,
        redis=redis,
        store=store,
        queue=queue,
        job_events=JobEvents(events_redis, keys),
        admission=admission,
        key_ring=key_ring,
        rate_limiter=RateLimiter.from_settings(redis, settings),
        read_rate_limiter=RateLimiter.reads_from_settings(redis, settings),
        batch_store=batch_store,
        batch_submitter=BatchSubmitter(settings, admission, store, batch_store, queue.send_task),
        batch_closer=BatchCloser(redis, keys, batch_store, queue.send_task),
    )
