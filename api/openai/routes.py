"""``/openai/v1``: models, chat completions, files and batches, spoken as OpenAI's API, run as native jobs.

Every route authenticates and spends the same budgets as the native ones (``CurrentCaller`` /
``Reader``), and every job enters through the same job and batch submitters, so each guard,
quota and key applies unchanged. Errors come from ``api.problems``, which writes OpenAI's
error object for paths under ``/openai/``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.admission import Door
from api.deps import CurrentCaller, Reader, services_of
from api.http.auth import CALLER_ERRORS
from api.http.problems import openai_error_responses
from api.http.security import EDGE_ERRORS
from api.jobs.events import wait_for_caption
from api.openai.batches import ERROR_FILE_PREFIX, OUTPUT_FILE_PREFIX
from api.openai.chat import chat_chunks, chat_completion, job_create_from_chat
from api.openai.store import StoredFile
from api.openai.wire import (
    BatchCreateRequest,
    BatchList,
    BatchObject,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    FileList,
    FileObject,
    ModelCard,
    ModelList,
    sse_event,
)
from api.services import Services
from shared import errors
from shared.errors import InvalidRequest, UploadTooLarge
from shared.intake.model_limits import read_model_limits
from shared.settings import EMBEDDED_MODEL

#: Where the facade is mounted; ``api.problems.OPENAI_PREFIX`` picks OpenAI's error shape under it.
PREFIX = "/openai/v1"
#: Media type of a streamed chat completion.
EVENT_STREAM_MEDIA_TYPE = "text/event-stream"
# Longest batch input file name kept.
_MAX_FILENAME_CHARS = 255
# Form fields of a file upload besides the file (purpose, and what clients add).
_MAX_FORM_FIELDS = 8

router = APIRouter(
    prefix=PREFIX,
    tags=["openai"],
    responses=openai_error_responses(*CALLER_ERRORS, *EDGE_ERRORS, errors.InvalidRequest),
)


async def _model_card(services: Services) -> ModelCard:
    """The model the workers serve (as the last heartbeat published it), else the configured one."""
    limits = await read_model_limits(services.redis, services.keys)
    if limits is not None:
        return ModelCard(id=limits.model, created=0, embedded=limits.embedded)
    configured = services.settings.model
    return ModelCard(id=configured, created=0, embedded=configured == EMBEDDED_MODEL)


@router.get("/models", summary="The served model (OpenAI: list models)")
async def openai_list_models(request: Request, caller: Reader) -> ModelList:
    """The one model the caption workers serve, and whether it is the embedded demonstration model."""
    return ModelList(data=[await _model_card(services_of(request))])


@router.post(
    "/chat/completions",
    summary="Caption one image (OpenAI: create chat completion)",
    response_model=ChatCompletion,
    responses={
        200: {
            "content": {
                EVENT_STREAM_MEDIA_TYPE: {
                    "schema": {
                        "type": "string",
                        "description": "With stream: server-sent events, each `data:` a chat.completion.chunk, "
                        "the last `data: [DONE]`.",
                    }
                }
            }
        },
        **openai_error_responses(
            errors.UrlNotAllowed,
            errors.UploadTooLarge,
            errors.NotAnImage,
            errors.FetchFailed,
            errors.WaitTimedOut,
            errors.QueueFull,
            errors.OwnerQuotaExceeded,
            errors.QueueUnavailable,
        ),
    },
)
async def openai_create_chat_completion(
    body: ChatCompletionRequest, request: Request, caller: CurrentCaller
) -> ChatCompletion | Response:
    """One user message with one image (https or data: URL), optional text as GIT's prompt; waits for the caption."""
    services = services_of(request)
    job_create = job_create_from_chat(body)
    # Taken before the job exists: an end before the wait begins is still seen.
    since = services.job_events.position()
    job = await services.admission.admit_job(job_create, caller.owner, Door.OPENAI_CHAT)
    done = await wait_for_caption(
        services.job_events, services.store, job, services.settings.openai_wait_s, since=since
    )
    model = done.model or services.settings.model
    if not body.stream:
        return chat_completion(done, model)
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    chunks = chat_chunks(done, model, include_usage=include_usage)
    return StreamingResponse(_stream(chunks), media_type=EVENT_STREAM_MEDIA_TYPE)


async def _stream(chunks: list[ChatCompletionChunk]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield sse_event(chunk)
    yield sse_event("[DONE]")


@router.post("/files", summary="Upload a batch input file (OpenAI: create file)", responses=openai_error_responses(
    errors.UploadTooLarge, errors.UnsupportedMediaType
))  # fmt: skip
async def openai_create_file(request: Request, caller: CurrentCaller) -> FileObject:
    """A JSONL batch input file (multipart ``file``, ``purpose=batch``), at most ``openai_max_file_bytes``."""
    services = services_of(request)
    limit = services.settings.openai_max_file_bytes
    filename, content, purpose = await _read_upload(request, limit)
    if purpose != "batch":
        raise InvalidRequest(
            "purpose must be batch: the only files this server takes are batch inputs", param="purpose"
        )
    stored = await services.openai_files.save_file(caller.owner, filename, content)
    return _file_object(stored, services.settings.job_ttl_s)


async def _read_upload(request: Request, limit: int) -> tuple[str, bytes, str]:
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise errors.UnsupportedMediaType("send the file as multipart/form-data, with purpose=batch")
    try:
        form = await request.form(max_files=1, max_fields=_MAX_FORM_FIELDS)
    except StarletteHTTPException as exc:  # Starlette's answer to a malformed or oversized form
        raise InvalidRequest(f"multipart form: {exc.detail}", param="file") from exc
    try:
        file, purpose = form.get("file"), form.get("purpose")
        if not isinstance(file, UploadFile):
            raise InvalidRequest("the upload needs its JSONL in a `file` field", param="file")
        content = await file.read(limit + 1)
        if len(content) > limit:
            raise UploadTooLarge(f"a batch file may be at most {limit} bytes", param="file")
        filename = (file.filename or "batch.jsonl")[:_MAX_FILENAME_CHARS]
        return filename, content, purpose if isinstance(purpose, str) else ""
    finally:
        await form.close()


def _file_object(stored: StoredFile, ttl_s: int) -> FileObject:
    created = int(stored.created_at.timestamp())
    return FileObject(
        id=stored.id,
        bytes=len(stored.content),
        created_at=created,
        filename=stored.filename,
        purpose="batch",
        expires_at=created + ttl_s,
    )


_FileId = Annotated[str, Path(max_length=256, description="The file's id, as the upload or the batch named it.")]


@router.get("/files", summary="List your batch input files (OpenAI: list files)")
async def openai_list_files(
    request: Request,
    caller: Reader,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
) -> FileList:
    """Your input files, newest first; output and error files are reached from their batch."""
    services = services_of(request)
    ids, has_more = await services.openai_files.list_ids(
        services.keys.openai_files(caller.owner), after=after, limit=limit
    )
    files = [await services.openai_files.get_file(file_id) for file_id in ids]
    data = [_file_object(f, services.settings.job_ttl_s) for f in files if f is not None and f.owner == caller.owner]
    return FileList(
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get("/files/{file_id}", summary="Read a file's metadata (OpenAI: retrieve file)",
            responses=openai_error_responses(errors.FileNotFound))  # fmt: skip
async def openai_read_file(file_id: _FileId, request: Request, caller: Reader) -> FileObject:
    """An input file, or a batch's output or error file (made once its batch has ended)."""
    services = services_of(request)
    if file_id.startswith((OUTPUT_FILE_PREFIX, ERROR_FILE_PREFIX)):
        content = b"".join([part async for part in _generated_content(services, file_id, caller.owner)])
        batch, _ = await services.openai_batches.owned_output(file_id, caller.owner)
        ended = int((batch.finished_at or batch.created_at).timestamp())
        return FileObject(
            id=file_id,
            bytes=len(content),
            created_at=ended,
            filename=f"{file_id}.jsonl",
            purpose="batch_output",
            expires_at=int(batch.expires_at.timestamp()),
        )
    stored = await services.openai_batches.owned_input_file(file_id, caller.owner)
    return _file_object(stored, services.settings.job_ttl_s)


@router.get(
    "/files/{file_id}/content",
    summary="Read a file's content (OpenAI: retrieve file content)",
    response_class=Response,
    responses={200: {"content": {"application/jsonl": {"schema": {"type": "string"}}}}, **openai_error_responses(
        errors.FileNotFound
    )},
)  # fmt: skip
async def openai_read_file_content(file_id: _FileId, request: Request, caller: Reader) -> Response:
    """The JSONL itself: an input file as uploaded, or a batch's output or error lines keyed by custom_id."""
    services = services_of(request)
    if file_id.startswith((OUTPUT_FILE_PREFIX, ERROR_FILE_PREFIX)):
        await services.openai_batches.owned_output(file_id, caller.owner)
        return StreamingResponse(_generated_content(services, file_id, caller.owner), media_type="application/jsonl")
    stored = await services.openai_batches.owned_input_file(file_id, caller.owner)
    return Response(stored.content, media_type="application/jsonl")


async def _generated_content(services: Services, file_id: str, owner: str) -> AsyncIterator[bytes]:
    batch, record = await services.openai_batches.owned_output(file_id, owner)
    if file_id.startswith(ERROR_FILE_PREFIX):
        async for line in services.openai_batches.error_content(batch, record):
            yield line
        return
    model = (await _model_card(services)).id
    async for line in services.openai_batches.output_content(batch, model):
        yield line


_BatchId = Annotated[str, Path(max_length=256, description="The batch's id (also a native /v1/batches id).")]


@router.post("/batches", summary="Run a batch input file (OpenAI: create batch)", responses=openai_error_responses(
    errors.FileNotFound, errors.TooManyItemsInFlight, errors.QueueUnavailable
))  # fmt: skip
async def openai_create_batch(body: BatchCreateRequest, request: Request, caller: CurrentCaller) -> BatchObject:
    """The file's good lines as one native batch; bad lines go to the error file, one by one."""
    services = services_of(request)
    return await services.openai_batches.create(body, caller.owner)


@router.get("/batches", summary="List your batches (OpenAI: list batches)")
async def openai_list_batches(
    request: Request,
    caller: Reader,
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> BatchList:
    """Your facade batches, newest first, ``limit`` at a time after the id ``after``."""
    services = services_of(request)
    index = services.keys.openai_batches(caller.owner)
    ids, has_more = await services.openai_files.list_ids(index, after=after, limit=limit)
    data: list[BatchObject] = []
    for batch_id in ids:
        try:
            batch, record = await services.openai_batches.owned_batch(batch_id, caller.owner)
        except errors.BatchNotFound:
            continue  # expired between the index and the read
        data.append(services.openai_batches.object_of(batch, record))
    first, last = (data[0].id, data[-1].id) if data else (None, None)
    return BatchList(data=data, has_more=has_more, first_id=first, last_id=last)


@router.get("/batches/{batch_id}", summary="Read a batch (OpenAI: retrieve batch)",
            responses=openai_error_responses(errors.BatchNotFound))  # fmt: skip
async def openai_read_batch(batch_id: _BatchId, request: Request, caller: Reader) -> BatchObject:
    """The batch's status and request counts; output and error file ids once it has ended."""
    services = services_of(request)
    batch, record = await services.openai_batches.owned_batch(batch_id, caller.owner)
    return services.openai_batches.object_of(batch, record)


@router.post("/batches/{batch_id}/cancel", summary="Cancel a batch (OpenAI: cancel batch)",
             responses=openai_error_responses(errors.BatchNotFound))  # fmt: skip
async def openai_cancel_batch(batch_id: _BatchId, request: Request, caller: CurrentCaller) -> BatchObject:
    """Cancel the requests not yet run; those already answered stay in the output file."""
    services = services_of(request)
    batch, record = await services.openai_batches.owned_batch(batch_id, caller.owner)
    await services.batch_submitter.cancel(batch)
    current = await services.batch_store.get(batch.id) or batch
    return services.openai_batches.object_of(current, record)
