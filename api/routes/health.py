"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (jobs can be taken and run), ``/metrics``."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from api.deps import AppKeys, AppSettings, KeyHolder, RedisClient
from api.http.problems import problem_responses
from api.http.security import EDGE_ERRORS
from api.metrics import CONTENT_TYPE, outstanding_work, read_snapshot, render_metrics
from shared import errors
from shared.errors import ModelNotReady
from shared.heartbeats import WorkerHeartbeats
from shared.jobs.store import map_redis_errors

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="getHealth", summary="Liveness")
async def healthz() -> dict[str, str]:
    """Always ok while the process serves requests."""
    return {"status": "ok"}


class Readiness(BaseModel):
    """What ``/readyz`` found: Redis answers and how many caption workers have their model loaded."""

    status: Literal["ok"] = "ok"
    workers: int = Field(description="Caption workers whose heartbeat says their model is loaded.")


@router.get(
    "/readyz",
    operation_id="getReadiness",
    summary="Readiness",
    responses=problem_responses(errors.QueueUnavailable, errors.ModelNotReady),
)
async def readyz(redis: RedisClient, keys: AppKeys, settings: AppSettings) -> Readiness:
    """Ok once Redis answers and (unless ``ready_requires_worker`` is off) a caption worker is ready.

    One ZCOUNT on the heartbeat set (``shared.heartbeats``), whatever the keyspace holds:
    probes call this every few seconds, unauthenticated.
    """
    with map_redis_errors("Redis"):
        workers = await WorkerHeartbeats(redis, keys).count_ready()
    if not workers and settings.ready_requires_worker:
        raise ModelNotReady("no caption worker has its model loaded yet")
    return Readiness(workers=workers)


class Outstanding(BaseModel):
    """What ``/scaler`` reports: the caption workers' outstanding work, for KEDA's ``metrics-api`` scaler."""

    outstanding: int = Field(description="Messages waiting on the caption and bulk queues plus jobs held by workers.")


@router.get(
    "/scaler",
    operation_id="getOutstandingWork",
    summary="Outstanding work, for the autoscaler",
    responses=problem_responses(errors.QueueUnavailable),
)
async def scaler(redis: RedisClient, keys: AppKeys) -> Outstanding:
    """Work the caption workers have yet to finish, read from Redis: KEDA's ``metrics-api`` trigger polls it.

    Unauthenticated and outside the Front Door check, like the probes, because KEDA calls it
    directly; it reveals one number. See docs/deploy.md for why the scaler reads this and not the lists.
    """
    snapshot = await read_snapshot(redis, keys)
    if not snapshot.redis_up:
        raise errors.QueueUnavailable("Redis did not answer")
    return Outstanding(outstanding=outstanding_work(snapshot))


@router.get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {CONTENT_TYPE: {}}, "description": "The Prometheus text format."},
        **problem_responses(errors.Unauthorized, *EDGE_ERRORS),
    },
)
async def metrics(caller: KeyHolder, redis: RedisClient, keys: AppKeys) -> PlainTextResponse:
    """Jobs by status, queue depths, webhook outcomes and ready workers, read from Redis (see docs/reliability.md).

    It takes an API key like any route (Prometheus sends it as a bearer token): the
    numbers describe every tenant's traffic.
    """
    snapshot = await read_snapshot(redis, keys)
    return PlainTextResponse(render_metrics(snapshot), media_type=CONTENT_TYPE)
