"""``/v1/jobs``: submit a caption job (JSON or multipart upload), list, read, long-poll and cancel one's jobs."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.admission import Door
from api.deps import (
    CurrentCaller,
    EventsPosition,
    OwnedJob,
    Queue,
    Reader,
    Store,
    check_visible,
    services_of,
)
from api.http.auth import CALLER_ERRORS
from api.http.openapi import LOCATION_HEADER, PREFERENCE_APPLIED_HEADER
from api.http.prefer import preference_applied, preferred_wait_s
from api.http.problems import invalid_request, problem_responses
from api.http.security import EDGE_ERRORS
from api.jobs.cancellation import cancel_job
from api.jobs.events import JobEvents, Position
from api.jobs.idempotency import IDEMPOTENCY_KEY_PATTERN
from api.jobs.listing import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, JobPage, list_jobs
from shared import errors
from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.intake.uploads import check_upload
from shared.jobs.model import (
    MAX_DEADLINE_S,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_URL_CHARS,
    MAX_WEBHOOK_EVENTS,
    Job,
    JobCreate,
    JobPublic,
    JobStatus,
    WebhookEvent,
)
from shared.jobs.store import JobStore
from shared.settings import Settings

# Every job route authenticates and rate-limits; the problems that can cause are documented once here.
router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(*CALLER_ERRORS, *EDGE_ERRORS, errors.InvalidRequest)
)

#: The largest ``?wait=`` / ``Prefer: wait=`` the API accepts; the server's max_wait_s (at most this) caps it further.
MAX_WAIT_PARAM_S = 300
_WAIT_DESCRIPTION = (
    "Seconds to wait for the job to end before answering (long-poll), at most the server's max_wait_s "
    "(60 s by default; GET /v1/limits says this server's); a larger value waits max_wait_s. 0 answers at once."
)

# Text fields of a multipart submission are short; the image is the only large part.
_MAX_FORM_FIELD_BYTES = 64 * 1024
_MAX_FORM_FIELDS = 16

_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "properties": {
        # Bounded by max_upload_bytes (413 upload_too_large), which a schema cannot state.
        "file": {"type": "string", "format": "binary", "description": "The image (JPEG, PNG, GIF, WebP, BMP or AVIF)."},
        "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS},
        "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_NEW_TOKENS},
        "webhook_url": {"type": "string", "maxLength": MAX_URL_CHARS},
        "webhook_events": {
            "type": "array",
            "maxItems": MAX_WEBHOOK_EVENTS,
            "items": {"type": "string", "enum": list(get_args(WebhookEvent))},
        },
        "deadline_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DEADLINE_S},
    },
}
_JSON_EXAMPLES = {
    "url": {"summary": "Caption an image by URL", "value": {"image_url": "https://example.com/cat.jpg"}},
    "options": {
        "summary": "With a prompt and a length limit",
        "value": {"image_url": "https://example.com/sign.png", "prompt": "a sign that says", "max_new_tokens": 20},
    },
    "webhook": {
        "summary": "Notify a webhook when done",
        "value": {"image_url": "https://example.com/cat.jpg", "webhook_url": "https://example.com/hooks/captions"},
    },
    "base64": {"summary": "Send the image inline", "value": {"image_base64": "iVBORw0KGgoAAAANSUhEUgAA..."}},
}
_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobCreate.model_json_schema(), "examples": _JSON_EXAMPLES},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


@router.post(
    "",
    status_code=202,
    operation_id="createJob",
    summary="Submit a caption job",
    response_description="The job, queued; poll the URL in its Location header.",
    openapi_extra=_SUBMIT_BODY,
    responses={
        202: {"headers": {**LOCATION_HEADER, **PREFERENCE_APPLIED_HEADER}},
        200: {
            "description": "With `Prefer: wait=N`: the job ended within the wait (its caption or error is in it).",
            "model": JobPublic,
            "headers": {**LOCATION_HEADER, **PREFERENCE_APPLIED_HEADER},
        },
        **problem_responses(
            errors.InvalidRequest,
            errors.UrlNotAllowed,
            errors.UploadTooLarge,
            errors.NotAnImage,
            errors.UnsupportedMediaType,
            errors.Unauthorized,
            errors.RateLimited,
            errors.IdempotencyConflict,
            errors.QueueUnavailable,
            errors.QueueFull,
            errors.OwnerQuotaExceeded,
        ),
    },
)
async def create_job(
    request: Request,
    response: Response,
    caller: CurrentCaller,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Any unique string (a UUID): the same key and body within 24 h return the same job, once "
            "queued; the same key with another body answers 422 idempotency_conflict.",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            max_length=1024,
            description="`wait=N` (RFC 7240): wait up to N seconds for the job to end before answering, like "
            f"?wait on GET; capped by max_wait_s (at most {MAX_WAIT_PARAM_S}). The answer says "
            "`Preference-Applied: wait=N`, and is 200 when the job ended in time.",
            examples=["wait=30"],
        ),
    ] = None,
) -> JobPublic:
    """Queue an image for captioning: JSON with ``image_url`` or ``image_base64``, or multipart with ``file``."""
    # The services from the request, not as dependencies: FastAPI resolves each one on every request.
    services = services_of(request)
    body, upload = await _read_submission(request, services.settings)
    # Taken before the job exists (or, replayed, is read): a later end is one the listener sees.
    since = services.job_events.position()
    job = await services.admission.admit_job(body, caller.owner, Door.JOB, upload, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    wait_s = preferred_wait_s(request.headers.getlist("prefer"))
    if wait_s is not None:
        wait_s = min(wait_s, services.settings.max_wait_s)
        job = await _wait_as_preferred(job, since, wait_s, response, services.store, services.job_events)
    return JobPublic.from_job(job)


async def _wait_as_preferred(
    job: Job, since: Position | None, wait_s: float, response: Response, store: JobStore, events: JobEvents
) -> Job:
    """``Prefer: wait`` honoured: the job once it ends (then 200) or after ``wait_s``, and Preference-Applied."""
    response.headers["Preference-Applied"] = preference_applied(wait_s)
    if wait_s > 0 and not job.status.is_final:
        ended = await events.wait_until_final(store, job.id, wait_s, seen=job, since=since)
        job = check_visible(ended, job.id, job.owner)
    if job.status.is_final:
        response.status_code = 200
    return job


@router.get(
    "",
    operation_id="listJobs",
    summary="List your jobs, newest first",
    response_description="A page of your jobs; follow next_cursor for older ones.",
    responses=problem_responses(errors.InvalidRequest, errors.Unauthorized, errors.QueueUnavailable),
)
async def list_own_jobs(
    caller: Reader,
    store: Store,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page; omit for the newest jobs.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Jobs per page.")] = DEFAULT_PAGE_SIZE,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
) -> JobPage:
    """The caller's own jobs (never another key's), newest first, a page at a time; reads spend the read budget."""
    return await list_jobs(store, caller.owner, cursor=cursor, limit=limit, status=status)


@router.get(
    "/{job_id}",
    operation_id="getJob",
    summary="Read a job, optionally waiting for it to end",
    responses=problem_responses(errors.JobNotFound, errors.Unauthorized, errors.QueueUnavailable),
)
async def read_job(
    request: Request,
    job: OwnedJob,
    since: EventsPosition,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_PARAM_S, description=_WAIT_DESCRIPTION, examples=[30])] = 0,
) -> JobPublic:
    """The job as it is now, or as soon as it ends when ``wait`` is given."""
    if wait > 0 and not job.status.is_final:
        # The services from the request, not as dependencies: FastAPI resolves each one on every request.
        services = services_of(request)
        wait_s = min(wait, services.settings.max_wait_s)
        waited = await services.job_events.wait_until_final(services.store, job.id, wait_s, seen=job, since=since)
        # OwnedJob checked the job is the caller's.
        job = check_visible(waited, job.id, job.owner)
    return JobPublic.from_job(job)


@router.post(
    "/{job_id}/cancel",
    operation_id="cancelJob",
    summary="Cancel a job",
    response_description="The job, canceled: it will not run, or its result is discarded.",
    responses=problem_responses(
        errors.JobNotFound, errors.JobNotCancelable, errors.Unauthorized, errors.QueueUnavailable
    ),
)
async def cancel(job: OwnedJob, caller: CurrentCaller, store: Store, queue: Queue) -> JobPublic:
    """Cancel a queued or running job; a job that has already ended answers 409 ``job_not_cancelable``.

    Canceling changes a job, so it spends the submit budget as well as the read one of finding the job.
    """
    canceled = await cancel_job(store, queue.send_task, job)
    return JobPublic.from_job(canceled)


async def _read_submission(request: Request, settings: Settings) -> tuple[JobCreate, bytes | None]:
    """The request's job and, from a multipart form, its image."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, settings)
    if media_type == "application/json" or media_type.endswith("+json"):
        return _parse_json(await request.body()), None
    raise UnsupportedMediaType("send application/json or multipart/form-data")


def _parse_json(raw: bytes) -> JobCreate:
    try:
        return JobCreate.model_validate_json(raw)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from exc


async def _read_multipart(request: Request, settings: Settings) -> tuple[JobCreate, bytes]:
    try:
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS, max_part_size=_MAX_FORM_FIELD_BYTES)
    except StarletteHTTPException as exc:  # Starlette's answer to a malformed or oversized form
        raise InvalidRequest(f"multipart form: {exc.detail}") from exc
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("a multipart submission needs its image in a `file` field")
        data = await file.read(settings.max_upload_bytes + 1)
        check_upload(data, max_upload_bytes=settings.max_upload_bytes)
        return _form_job_create(form), data
    finally:
        await form.close()


def _form_job_create(form: FormData) -> JobCreate:
    fields: dict[str, Any] = {}
    for name in form:
        if name == "file":
            continue
        values = form.getlist(name)
        if not all(isinstance(value, str) for value in values):
            raise InvalidRequest(f"{name} must be a text field")
        # webhook_events may repeat, or come as one comma-separated value.
        if name == "webhook_events":
            fields[name] = [item for value in values for item in str(value).split(",") if item]
        elif len(values) > 1:
            # OWASP HTTP Parameter Pollution: a repeated single-valued field is refused, not resolved.
            raise InvalidRequest(f"{name} must be given once")
        else:
            fields[name] = values[0]
    try:
        return JobCreate.model_validate(fields)
    except ValidationError as exc:
        raise invalid_request(exc.errors()) from exc
