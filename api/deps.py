"""FastAPI dependencies: the objects ``create_app`` put on ``app.state``, typed for routes."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Request

from api.auth import Caller, authenticate, require_caller
from api.job_events import JobEvents
from api.submission import JobSubmitter
from shared.batch_store import BatchStore
from shared.errors import JobNotFound
from shared.jobs import Job
from shared.settings import Settings
from shared.store import JobStore

# new_job_id(): "job_" and 22 URL-safe characters; anything else is not worth a Redis lookup.
_JOB_ID = re.compile(r"job_[A-Za-z0-9_-]{16,64}")


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> JobStore:
    """The job store over the app's Redis client."""
    store: JobStore = request.app.state.store
    return store


def get_job_events(request: Request) -> JobEvents:
    """The process's job-events listener (for long-polls)."""
    events: JobEvents = request.app.state.job_events
    return events


def get_submitter(request: Request) -> JobSubmitter:
    """Validates, stores and queues new jobs."""
    submitter: JobSubmitter = request.app.state.submitter
    return submitter


AppSettings = Annotated[Settings, Depends(get_app_settings)]
Store = Annotated[JobStore, Depends(get_store)]
Events = Annotated[JobEvents, Depends(get_job_events)]
Submitter = Annotated[JobSubmitter, Depends(get_submitter)]
#: The authenticated, rate-limited caller; its ``owner`` scopes every job it sees.
CurrentCaller = Annotated[Caller, Depends(require_caller)]
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


async def get_owned_job(request: Request, job_id: str, caller: CurrentCaller, store: Store) -> Job:
    """The path's job if the caller owns it, else 404 ``job_not_found`` (OWASP API1:2023, BOLA).

    Every ``/v1/jobs/{job_id}`` route takes its job through this one dependency, so none can
    forget the owner check, and it runs before any long-poll: waiting on another key's job
    would reveal, by timing, that it exists.
    """
    check_job_id(job_id)
    job = await store.get(job_id)
    if job is None:
        # A batch item whose results were compacted when its batch ended (shared.batch_results).
        batches: BatchStore = request.app.state.batch_store
        job = await batches.read_item_job(job_id)
    return check_visible(job, job_id, caller.owner)


#: The job named in the path, already checked to belong to the caller.
OwnedJob = Annotated[Job, Depends(get_owned_job)]
