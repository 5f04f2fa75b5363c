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
from api.jobs.events import wait_for_caption
from shared import errors
from shared.jobs.model import JobCreate

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
    cache: Annotated[
        bool, Query(description="Use the caption cache; false captions the image afresh (docs/cache.md).")
    ] = True,
) -> str:
    """Caption the image at ``url``: 200 with the caption, the job's error, or 504 after ``caption_wait_s``."""
    since = events.position()
    job = await admission.admit_job(JobCreate(image_url=url, cache=cache), caller.owner, Door.CAPTION)
    done = await wait_for_caption(events, store, job, settings.caption_wait_s, since=since)
    return done.caption or ""
