"""``/v1/batches``: submit many images as one batch, follow its counts, read or stream its results, cancel it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import MAX_JOB_ID_PATH_CHARS, AdmissionDep, Batches, BatchSubmitterDep, CurrentCaller, Reader
from api.http.auth import CALLER_ERRORS
from api.http.problems import problem_responses
from api.http.security import EDGE_ERRORS
from api.jobs.idempotency import IDEMPOTENCY_KEY_PATTERN
from shared import errors
from shared.batches.model import Batch, BatchCreate, BatchItems, BatchPublic, BatchResultsPage, is_batch_id
from shared.batches.store import BatchStore
from shared.errors import BatchNotFound

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=problem_responses(*CALLER_ERRORS, *EDGE_ERRORS))

#: Media type of the streamed results: one JSON object per line.
NDJSON_MEDIA_TYPE = "application/x-ndjson"
#: Most results one page may hold.
MAX_PAGE_ITEMS = 1_000
# Items read from Redis per step while streaming NDJSON.
_STREAM_STEP_ITEMS = 500
# Bodies up to this size are parsed by the in-flight check itself (to let an empty append through).
_SMALL_BODY_BYTES = 4096
_SUBMIT_ERRORS = (
    errors.InvalidRequest,
    errors.UrlNotAllowed,
    errors.UploadTooLarge,
    errors.NotAnImage,
    errors.TooManyItemsInFlight,
    errors.IdempotencyConflict,
    errors.QueueUnavailable,
)


_BatchIdPath = Annotated[
    str, Path(max_length=MAX_JOB_ID_PATH_CHARS, description="The batch's id, as POST answered it.")
]


async def _visible_batch(batch_id: str, owner: str, batches: BatchStore) -> Batch:
    """The batch if ``owner`` owns it, else 404 ``batch_not_found`` (never 403: ids stay secret)."""
    if not is_batch_id(batch_id):
        raise BatchNotFound(f"no batch {batch_id[:80]}", batch_id=batch_id[:80])
    batch = await batches.get(batch_id)
    if batch is None or batch.owner != owner:
        raise BatchNotFound(f"no batch {batch_id}", batch_id=batch_id)
    return batch


async def get_owned_batch(batch_id: _BatchIdPath, caller: CurrentCaller, batches: Batches) -> Batch:
    """The path's batch, for a change (append, cancel): spends the submit budget."""
    return await _visible_batch(batch_id, caller.owner, batches)


async def get_readable_batch(batch_id: _BatchIdPath, caller: Reader, batches: Batches) -> Batch:
    """The path's batch, for a read: spends the read budget, as job reads do, so polling never blocks submitting."""
    return await _visible_batch(batch_id, caller.owner, batches)


OwnedBatch = Annotated[Batch, Depends(get_owned_batch)]


async def require_room_in_flight(request: Request, caller: CurrentCaller, admission: AdmissionDep) -> None:
    """The cheapest check first: a key already at its items-in-flight cap is refused before its body is validated.

    FastAPI solves dependencies before it validates the body, so 10,000 items are never checked only to be
    refused (bench/README.md, "Admission": ``/healthz`` p99 during refusals 292 ms with this check against
    593 ms with the cap checked in the route, under load 11); the exact count is
    checked by the admission, and atomically by the create script. A small body is read first: an empty
    append, which only closes its batch, needs no room.
    """
    body = await request.body()
    if len(body) <= _SMALL_BODY_BYTES:
        try:
            if not json.loads(body).get("items"):
                return
        except (ValueError, AttributeError):
            return  # the body's own validation answers
    await admission.check_items_in_flight(caller.owner, 1)


_ROOM_IN_FLIGHT = [Depends(require_room_in_flight)]
ReadableBatch = Annotated[Batch, Depends(get_readable_batch)]


@router.post(
    "",
    status_code=202,
    summary="Submit a batch of images",
    dependencies=_ROOM_IN_FLIGHT,
    response_description="The batch, queued; poll the URL in its Location header.",
    responses=problem_responses(*_SUBMIT_ERRORS),
)
async def create_batch(
    body: BatchCreate,
    response: Response,
    caller: CurrentCaller,
    submitter: BatchSubmitterDep,
    batches: Batches,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Any unique string: the same key and body within 24 h return the same batch, queued once.",
        ),
    ] = None,
) -> BatchPublic:
    """Queue up to ``max_batch_items`` images sharing options; every item also becomes a job."""
    batch = await submitter.submit(body, caller.owner, idempotency_key=idempotency_key)
    public = BatchPublic.from_batch(await batches.get(batch.id) or batch)
    response.headers["Location"] = public.url
    return public


@router.post(
    "/{batch_id}/items",
    status_code=202,
    summary="Add items to an open batch",
    dependencies=_ROOM_IN_FLIGHT,
    responses=problem_responses(*_SUBMIT_ERRORS, errors.BatchNotFound, errors.BatchClosed),
)
async def append_items(
    body: BatchItems, batch: OwnedBatch, submitter: BatchSubmitterDep, batches: Batches
) -> BatchPublic:
    """Append items to a batch submitted with ``more_items``; send the last ones (or none) without it to close the batch."""
    await submitter.append(batch, body)
    return BatchPublic.from_batch(await _reread(batches, batch))


@router.get(
    "/{batch_id}",
    summary="Read a batch: counts per status, progress and timings",
    responses=problem_responses(errors.BatchNotFound, errors.InvalidRequest, errors.QueueUnavailable),
)
async def read_batch(batch: ReadableBatch) -> BatchPublic:
    """The batch as it is now."""
    return BatchPublic.from_batch(batch)


@router.get(
    "/{batch_id}/results",
    summary="Read a batch's results, a page at a time or streamed as NDJSON",
    response_model=BatchResultsPage,
    responses={
        **problem_responses(errors.BatchNotFound, errors.InvalidRequest, errors.QueueUnavailable),
        200: {"content": {NDJSON_MEDIA_TYPE: {"schema": {"type": "string"}}}},
    },
)
async def read_results(
    request: Request,
    batch: ReadableBatch,
    batches: Batches,
    cursor: Annotated[
        str | None,
        Query(
            max_length=9, pattern=r"^[0-9]{1,9}$", description="next_cursor of the previous page; absent: the start."
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_ITEMS, description="Results per page.")] = 100,
) -> BatchResultsPage | Response:
    """Items in order with their job id, ``ref``, status and caption or error.

    With ``Accept: application/x-ndjson`` every item from ``cursor`` on is streamed, one JSON object per line.
    """
    start = int(cursor) if cursor is not None else 0
    if NDJSON_MEDIA_TYPE in request.headers.get("accept", ""):
        return StreamingResponse(_stream(batches, batch, start), media_type=NDJSON_MEDIA_TYPE)
    items = await batches.read_results(batch, start, limit)
    stop = start + len(items)
    page = BatchResultsPage(items=items, next_cursor=str(stop) if stop < batch.total else None)
    return page


@router.post(
    "/{batch_id}/cancel",
    summary="Cancel a batch",
    response_description="The batch: its items not yet ended are canceled; one already ended stays as it is.",
    responses=problem_responses(errors.BatchNotFound, errors.InvalidRequest, errors.QueueUnavailable),
)
async def cancel_batch(batch: OwnedBatch, submitter: BatchSubmitterDep, batches: Batches) -> BatchPublic:
    """Cancel every queued or running item and close the batch to new items."""
    await submitter.cancel(batch)
    return BatchPublic.from_batch(await _reread(batches, batch))


async def _reread(batches: BatchStore, batch: Batch) -> Batch:
    current = await batches.get(batch.id)
    if current is None:
        raise BatchNotFound(f"no batch {batch.id}", batch_id=batch.id)
    return current


async def _stream(batches: BatchStore, batch: Batch, start: int) -> AsyncIterator[bytes]:
    for first in range(start, batch.total, _STREAM_STEP_ITEMS):
        rows = await batches.read_results(batch, first, _STREAM_STEP_ITEMS)
        yield b"".join(json.dumps(row.model_dump(mode="json")).encode() + b"\n" for row in rows)
