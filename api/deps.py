"""FastAPI dependencies: the one reader of the :class:`~api.services.Services` that ``create_app`` built.

Routes and other dependencies take what they need from here, typed; nothing else reads ``app.state``.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.asyncio import Redis

from api.admission import Admission
from api.batches.service import BatchSubmitter
from api.broker.publisher import TaskQueue
from api.http.auth import ANONYMOUS_OWNER, Caller, check_same_origin
from api.jobs.events import JobEvents, Position
from api.services import Services
from shared.batches.store import BatchStore
from shared.errors import JobNotFound, Unauthorized
from shared.jobs.model import Job
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings
from shared.webhooks.secrets import WebhookSecrets

# new_job_id(): "job_" and 22 URL-safe characters; anything else is not worth a Redis lookup.
_JOB_ID = re.compile(r"job_[A-Za-z0-9_-]{16,64}")
#: Longest path segment read as a job id; longer ones answer 422 before any lookup.
MAX_JOB_ID_PATH_CHARS = 1024


# Only documents the scheme in OpenAPI (the "Authorize" button of /docs); the header is
# parsed by KeyRing, because HTTPBearer would treat "Basic …" as no credentials at all.
_bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")


def services_of(request: Request) -> Services:
    """The services ``create_app`` built for the request's app."""
    services: Services = request.app.state.services
    return services


# Every dependency here is ``async def`` although none awaits, and takes the request rather than
# AppServices: FastAPI runs a plain ``def`` dependency in a worker thread, and resolves each
# sub-dependency on every request, which together cost more CPU than the request's own work
# (bench/README.md, "The API's share of a single job": with the direct task write, API CPU per job 5.7-6.2 → 2.8 ms).
async def get_services(request: Request) -> Services:
    """The services ``create_app`` built for this app."""
    return services_of(request)


AppServices = Annotated[Services, Depends(get_services)]


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return services_of(request).settings


async def get_keys(request: Request) -> Keys:
    """Redis key names under the app's prefix."""
    return services_of(request).keys


async def get_redis(request: Request) -> Redis:
    """The app's Redis client (for probes and metrics; jobs go through the store)."""
    return services_of(request).redis


async def get_store(request: Request) -> JobStore:
    """The job store over the app's Redis client."""
    return services_of(request).store


async def get_queue(request: Request) -> TaskQueue:
    """The Celery client that publishes tasks."""
    return services_of(request).queue


async def get_job_events(request: Request) -> JobEvents:
    """The process's job-events listener (for long-polls)."""
    return services_of(request).job_events


async def get_admission(request: Request) -> Admission:
    """The one door every job comes in through."""
    return services_of(request).admission


async def get_batch_store(request: Request) -> BatchStore:
    """Batch records, their counts and their compacted results."""
    return services_of(request).batch_store


async def get_batch_submitter(request: Request) -> BatchSubmitter:
    """Validates, stores, queues and cancels batches."""
    return services_of(request).batch_submitter


AppSettings = Annotated[Settings, Depends(get_app_settings)]
AppKeys = Annotated[Keys, Depends(get_keys)]
RedisClient = Annotated[Redis, Depends(get_redis)]
Store = Annotated[JobStore, Depends(get_store)]
Queue = Annotated[TaskQueue, Depends(get_queue)]


async def get_webhook_secrets(store: Store, settings: AppSettings) -> WebhookSecrets:
    """Every owner's webhook signing secrets, in the job store's Redis."""
    return WebhookSecrets(store.redis, store.keys, settings.webhook_secret_grace_s)


WebhookSecretStore = Annotated[WebhookSecrets, Depends(get_webhook_secrets)]
Events = Annotated[JobEvents, Depends(get_job_events)]
AdmissionDep = Annotated[Admission, Depends(get_admission)]
Batches = Annotated[BatchStore, Depends(get_batch_store)]
BatchSubmitterDep = Annotated[BatchSubmitter, Depends(get_batch_submitter)]


#: The bearer scheme as a dependency: it documents the scheme; the key itself is read by :func:`_authenticated`.
BearerDocumented = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]


def _authenticated(request: Request) -> Caller:
    services = services_of(request)
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        # Two credentials are ambiguous: proxies and apps may each pick a different one.
        raise Unauthorized("send exactly one Authorization header")
    caller = services.key_ring.authenticate(values[0] if values else None)
    if caller.owner == ANONYMOUS_OWNER:
        own_origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
        check_same_origin(request.headers, own_origin, services.settings.cors_origins)
    return caller


async def authenticate(request: Request, _documented: BearerDocumented) -> Caller:
    """The caller, or 401 ``unauthorized``; without a key, 403 ``cross_site_request`` for other sites' pages."""
    return _authenticated(request)


# require_caller and require_reader authenticate by a plain call, not through the authenticate
# dependency: FastAPI resolves every dependency of every request, at a cost comparable to the check.
async def require_caller(request: Request, _documented: BearerDocumented) -> Caller:
    """The caller, authenticated and within its submit budget (for the job API).

    Raises:
        Unauthorized: 401 ``unauthorized``.
        CrossSiteRequest: 403 ``cross_site_request``.
        RateLimited: 429 ``rate_limited`` with ``retry_after_s``.
    """
    caller = _authenticated(request)
    await services_of(request).rate_limiter.check(caller.owner, request.scope.setdefault("state", {}))
    return caller


async def require_reader(request: Request, _documented: BearerDocumented) -> Caller:
    """The caller, authenticated and within its read budget (not the submit one): for reading its own jobs.

    Raises:
        Unauthorized: 401 ``unauthorized``.
        CrossSiteRequest: 403 ``cross_site_request``.
        RateLimited: 429 ``rate_limited`` with ``retry_after_s``.
    """
    caller = _authenticated(request)
    await services_of(request).read_rate_limiter.check(caller.owner, request.scope.setdefault("state", {}))
    return caller


#: The authenticated, rate-limited caller; its ``owner`` scopes every job it sees.
CurrentCaller = Annotated[Caller, Depends(require_caller)]
#: The authenticated caller, within its read budget: for reading and long-polling its own jobs.
Reader = Annotated[Caller, Depends(require_reader)]
#: A caller with a valid key but no rate limit: for /metrics, which a scraper polls on its own schedule.
KeyHolder = Annotated[Caller, Depends(authenticate)]


def check_visible(job: Job | None, job_id: str, owner: str) -> Job:
    """``job`` if it exists and belongs to ``owner``; otherwise 404 (never 403: ids of others stay secret)."""
    if job is None or job.owner != owner:
        raise JobNotFound(f"no job {job_id}", job_id=job_id)
    return job


def check_job_id(job_id: str) -> str:
    """``job_id`` if it has the form of our ids, else 404 without touching Redis."""
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(f"no job {job_id[:80]}", job_id=job_id[:80])
    return job_id


async def get_events_position(request: Request) -> Position | None:
    """The job-events listener's position, taken once per request (FastAPI caches it) before the job is read."""
    return services_of(request).job_events.position()


#: Where the job-events listener was before the request read its job: a long-poll passes it on, to skip a re-read.
EventsPosition = Annotated[Position | None, Depends(get_events_position)]


async def get_owned_job(
    request: Request,
    job_id: Annotated[str, Path(max_length=MAX_JOB_ID_PATH_CHARS, description="The job's id, as POST answered it.")],
    caller: Reader,
    _since: EventsPosition,
) -> Job:
    """The path's job if the caller owns it, else 404 ``job_not_found`` (OWASP API1:2023, BOLA).

    Every ``/v1/jobs/{job_id}`` route takes its job through this one dependency, so none can
    forget the owner check, and it runs before any long-poll: waiting on another key's job
    would reveal, by timing, that it exists. ``_since`` is only taken here, before the read; a route
    that long-polls gets the same (cached) value.
    """
    check_job_id(job_id)
    services = services_of(request)
    job = await services.store.get(job_id)
    if job is None:
        # A batch item whose results were compacted when its batch ended (shared.batches.results).
        job = await services.batch_store.read_item_job(job_id)
    return check_visible(job, job_id, caller.owner)


#: The job named in the path, already checked to belong to the caller.
OwnedJob = Annotated[Job, Depends(get_owned_job)]
