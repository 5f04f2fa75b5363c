"""``/v1/jobs``: submit a caption job (JSON or multipart upload), read it, long-poll it."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import CALLER_ERRORS
from api.cancellation import cancel_job
from api.deps import AppSettings, CurrentCaller, Events, OwnedJob, Queue, Store, Submitter, check_visible
from api.idempotency import IDEMPOTENCY_KEY_PATTERN
from api.problems import invalid_request, problem_responses
from api.security import EDGE_ERRORS
from shared import errors
from shared.errors import InvalidRequest, UnsupportedMediaType
from shared.jobs import (
    MAX_DEADLINE_S,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_URL_CHARS,
    MAX_WEBHOOK_EVENTS,
    JobCreate,
    JobPublic,
    WebhookEvent,
)
from shared.settings import Settings
from shared.uploads import check_upload

# Every job route authenticates and rate-limits; the problems that can cause are documented once here.
router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(*CALLER_ERRORS, *EDGE_ERRORS, errors.InvalidRequest)
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
    summary="Submit a caption job",
    response_description="The job, queued; poll the URL in its Location header.",
    openapi_extra=_SUBMIT_BODY,
    responses=problem_responses(
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
)
async def create_job(
    request: Request,
    response: Response,
    caller: CurrentCaller,
    submitter: Submitter,
    settings: AppSettings,
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
) -> JobPublic:
    """Queue an image for captioning: JSON with ``image_url`` or ``image_base64``, or multipart with ``file``."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload: bytes | None = None
    if media_type == "multipart/form-data":
        body, upload = await _read_multipart(request, settings)
    elif media_type == "application/json" or media_type.endswith("+json"):
        body = _parse_json(await request.body())
    else:
        raise UnsupportedMediaType("send application/json or multipart/form-data")
    job = await submitter.submit(body, caller.owner, upload, idempotency_key=idempotency_key)
    public = JobPublic.from_job(job)
    response.headers["Location"] = public.url
    return public


@router.get(
    "/{job_id}",
    summary="Read a job, optionally waiting for it to end",
    responses=problem_responses(errors.JobNotFound, errors.Unauthorized, errors.QueueUnavailable),
)
async def read_job(
    job: OwnedJob,
    caller: CurrentCaller,
    store: Store,
    events: Events,
    settings: AppSettings,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=300,
            description="Seconds to wait for the job to end before answering (long-poll); capped by the server's "
            "max_wait_s (60 s by default). 0 answers at once.",
            examples=[30],
        ),
    ] = 0,
) -> JobPublic:
    """The job as it is now, or as soon as it ends when ``wait`` is given."""
    if wait > 0 and not job.status.is_final:
        waited = await events.wait_until_final(store, job.id, min(wait, settings.max_wait_s))
        job = check_visible(waited, job.id, caller.owner)
    return JobPublic.from_job(job)


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    response_description="The job, canceled: it will not run, or its result is discarded.",
    responses=problem_responses(
        errors.JobNotFound, errors.JobNotCancelable, errors.Unauthorized, errors.QueueUnavailable
    ),
)
async def cancel(job: OwnedJob, store: Store, queue: Queue) -> JobPublic:
    """Cancel a queued or running job; a job that has already ended answers 409 ``job_not_cancelable``."""
    canceled = await cancel_job(store, queue.send_task, job)
    return JobPublic.from_job(canceled)


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
