"""``GET /caption?url=``: the original blog's one-call contract, kept for its existing users.

It submits an ordinary job, waits for it (bounded by ``caption_wait_s``) and answers
the caption as a JSON string. A job that does not end in time answers 504
``wait_timeout`` with the job's URL, so the client can poll it instead.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.admission import Door
from api.deps import AdmissionDep, AppSettings, CurrentCaller, Events, Store
from api.http.auth import CALLER_ERRORS
from api.http.problems import problem_responses
from api.http.security import EDGE_ERRORS
from shared import errors
from shared.error_codes import error_for_code
from shared.errors import JobEnded, WaitTimedOut
from shared.jobs.model import JobCreate, JobStatus

# Authenticated and rate-limited like the job routes; those problems are documented once here.
router = APIRouter(tags=["caption"], responses=problem_responses(*CALLER_ERRORS, *EDGE_ERRORS, errors.InvalidRequest))


@router.get(
    "/caption",
    operation_id="getCaption",
    summary="Caption an image by URL and wait for the result",
    response_description="The caption, as a JSON string.",
    responses={
        200: {"content": {"application/json": {"example": "a large red circle on a white background"}}},
        **problem_responses(
            errors.UrlNotAllowed,
            errors.FetchFailed,
            errors.NotAnImage,
            errors.WaitTimedOut,
            errors.QueueUnavailable,
            errors.QueueFull,
            errors.OwnerQuotaExceeded,
        ),
    },
)
async def caption_url(
    url: Annotated[
        str, Query(max_length=2048, description="http(s) URL of the image.", examples=["https://example.com/cat.jpg"])
    ],
    caller: CurrentCaller,
    admission: AdmissionDep,
    store: Store,
    events: Events,
    settings: AppSettings,
) -> str:
    """Caption the image at ``url``: 200 with the caption, the job's error, or 504 after ``caption_wait_s``."""
    job = await admission.admit_job(JobCreate(image_url=url), caller.owner, Door.CAPTION)
    done = await events.wait_until_final(store, job.id, settings.caption_wait_s)
    if done is None or not done.status.is_final:
        raise WaitTimedOut(
            f"the caption is not ready after {settings.caption_wait_s:g} s; poll the job",
            job_id=job.id,
            job_url=f"/v1/jobs/{job.id}",
        )
    if done.status is JobStatus.SUCCEEDED and done.caption is not None:
        return done.caption
    if done.error is not None:
        extra = {"upstream_status": done.error.upstream_status} if done.error.upstream_status else {}
        raise error_for_code(done.error.code, done.error.message, job_id=job.id, **extra)
    raise JobEnded(f"the job ended {done.status}", job_id=job.id)
