"""OpenAI batches onto native batches: a file's lines become one Captionizer batch, its unreadable ones the error file.

Lines that read as chat requests go through the native ``BatchSubmitter`` (in slices of
``max_batch_items``) and so through :class:`api.admission.Admission` as ``Door.OPENAI_BATCH``: each is
checked as a job of its own, and one refused there (an image URL not allowed, an inline image too
large...) is stored failed with its code, as any native batch item is, and lands in the error file
with that code. Lines that cannot be read, or ask for what a chat completion refuses, never become
items: the facade keeps them and writes them to the error file first. A native batch has one prompt
and one ``max_new_tokens``: a line asking for others than the first good line's fails the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from api.admission import Door
from api.batches.service import BatchSubmitter
from api.http.problems import openai_error_body, openai_status
from api.openai.batch_lines import BatchLine, LineError, failed_line, output_line, read_batch_lines
from api.openai.chat import chat_completion
from api.openai.store import FacadeBatch, FacadeStore, StoredFile
from api.openai.wire import BatchCreateRequest, BatchObject, RequestCounts
from shared.batches.model import Batch, BatchCreate, BatchItemCreate, BatchItemResult, BatchItems, BatchState
from shared.batches.store import BatchStore
from shared.error_codes import CLASSES_BY_CODE
from shared.error_families import CaptionizerError
from shared.errors import BatchNotFound, FileNotFound, InternalError, InvalidRequest, JobEnded
from shared.jobs.model import Job, JobCreate, JobStatus
from shared.settings import Settings

#: Output and error files are made from the batch when read; their ids name it.
OUTPUT_FILE_PREFIX = "file-out-"
ERROR_FILE_PREFIX = "file-err-"
# Results read from Redis per step while writing an output file.
_READ_STEP_ITEMS = 500
_STATUS = {
    BatchState.OPEN: "in_progress",
    BatchState.RUNNING: "in_progress",
    BatchState.COMPLETED: "completed",
    BatchState.CANCELED: "cancelled",
}


class FacadeBatches:
    """Creates facade batches and shows them, and their output and error files, in OpenAI's formats."""

    def __init__(self, settings: Settings, files: FacadeStore, native: BatchSubmitter, batches: BatchStore) -> None:
        self.settings = settings
        self.files = files
        self.native = native
        self.batches = batches

    async def create(self, request: BatchCreateRequest, owner: str) -> BatchObject:
        """Run the good lines of ``request.input_file_id`` as one native batch.

        Raises:
            FileNotFound: no such file of the caller's.
            InvalidRequest: the file is unreadable as a whole, or no line of it can run.
            TooManyItemsInFlight, QueueUnavailable: as for ``POST /v1/batches``.
        """
        stored = await self.owned_input_file(request.input_file_id, owner)
        lines = read_batch_lines(stored.content, max_lines=self.settings.openai_max_file_lines)
        good, errors = self._split_lines(lines)
        if not good:
            raise InvalidRequest(
                f"no line of {stored.id} can run; the first: {errors[0].message}", param="input_file_id"
            )
        batch = await self._submit(good, owner)
        record = FacadeBatch(batch.id, owner, stored.id, len(lines), errors, request.metadata)
        await self.files.save_batch(record)
        return self.object_of(await self.batches.get(batch.id) or batch, record)

    async def owned_input_file(self, file_id: str, owner: str) -> StoredFile:
        """The caller's input file ``file_id``, else 404 ``file_not_found`` (never 403: ids stay secret)."""
        stored = await self.files.get_file(file_id[:128])
        if stored is None or stored.owner != owner:
            raise FileNotFound(f"no file {file_id[:128]}", param="input_file_id")
        return stored

    @staticmethod
    def _split_lines(lines: Sequence[BatchLine | LineError]) -> tuple[list[BatchLine], list[LineError]]:
        """The lines that become items, and those that fail here: unreadable, or options unlike the first's."""
        good: list[BatchLine] = []
        errors: list[LineError] = []
        for line in lines:
            if isinstance(line, LineError):
                errors.append(line)
            elif good and _options(line.request) != _options(good[0].request):
                message = "every line of a batch must ask for the first line's prompt and max_tokens"
                errors.append(LineError(line.line, line.custom_id, InvalidRequest.code, message))
            else:
                good.append(line)
        return good, errors

    async def _submit(self, lines: list[BatchLine], owner: str) -> Batch:
        size = self.settings.max_batch_items
        first, rest = lines[:size], lines[size:]
        options = first[0].request
        create = BatchCreate(
            items=[_item(line) for line in first],
            prompt=options.prompt,
            max_new_tokens=options.max_new_tokens,
            more_items=bool(rest),
        )
        batch = await self.native.submit(create, owner, door=Door.OPENAI_BATCH)
        for start in range(0, len(rest), size):
            part = rest[start : start + size]
            more = start + size < len(rest)
            items = BatchItems(items=[_item(line) for line in part], more_items=more)
            await self.native.append(batch, items, door=Door.OPENAI_BATCH)
        return batch

    def object_of(self, batch: Batch, record: FacadeBatch) -> BatchObject:
        """The native batch and the facade's record as OpenAI's ``batch`` object."""
        succeeded = batch.counts.get(JobStatus.SUCCEEDED, 0)
        failed_items = batch.done - succeeded
        status = _STATUS[batch.state]
        ended = batch.finished_at is not None
        return BatchObject(
            id=batch.id,
            endpoint="/v1/chat/completions",
            input_file_id=record.input_file_id,
            completion_window="24h",
            status=status,
            output_file_id=OUTPUT_FILE_PREFIX + batch.id if ended and succeeded else None,
            error_file_id=ERROR_FILE_PREFIX + batch.id if ended and (failed_items or record.line_errors) else None,
            created_at=_epoch(batch.created_at),
            in_progress_at=_epoch(batch.created_at),
            expires_at=_epoch(batch.expires_at),
            completed_at=_epoch(batch.finished_at) if status == "completed" else None,
            cancelling_at=_epoch(batch.canceled_at),
            cancelled_at=_epoch(batch.finished_at) if status == "cancelled" else None,
            request_counts=RequestCounts(
                total=record.total_lines, completed=succeeded, failed=failed_items + len(record.line_errors)
            ),
            metadata=record.metadata,
        )

    async def output_content(self, batch: Batch, model: str) -> AsyncIterator[bytes]:
        """The output file: one line per request that succeeded."""
        async for row in self._rows(batch):
            if row.status is JobStatus.SUCCEEDED and row.ref is not None:
                body = chat_completion(_job_of(batch, row), model).model_dump(mode="json")
                yield output_line(row.ref, row.id, 200, body)

    async def error_content(self, batch: Batch, record: FacadeBatch) -> AsyncIterator[bytes]:
        """The error file: lines that never ran, then requests that failed, with the error they would have had."""
        for error in record.line_errors:
            yield failed_line(batch.id, error)
        async for row in self._rows(batch):
            if row.status is not JobStatus.SUCCEEDED and row.status.is_final and row.ref is not None:
                code, message = _error_of(row)
                status = CLASSES_BY_CODE.get(code, InternalError).status
                body = openai_error_body(code, status, message, {})
                yield output_line(row.ref, row.id, openai_status(status), body)

    async def _rows(self, batch: Batch) -> AsyncIterator[BatchItemResult]:
        for first in range(0, batch.total, _READ_STEP_ITEMS):
            for row in await self.batches.read_results(batch, first, _READ_STEP_ITEMS):
                yield row

    async def owned_output(self, file_id: str, owner: str) -> tuple[Batch, FacadeBatch]:
        """The caller's batch behind output or error file ``file_id``, else 404 ``file_not_found``."""
        batch_id = file_id.removeprefix(OUTPUT_FILE_PREFIX).removeprefix(ERROR_FILE_PREFIX)
        found = await self.owned_batch(batch_id, owner, missing=FileNotFound(f"no file {file_id[:128]}"))
        if found[0].finished_at is None:
            raise FileNotFound(f"no file {file_id[:128]} yet: the batch has not ended")
        return found

    async def owned_batch(
        self, batch_id: str, owner: str, *, missing: CaptionizerError | None = None
    ) -> tuple[Batch, FacadeBatch]:
        """The caller's facade batch, else 404 (``batch_not_found``, or ``missing``)."""
        error = missing or BatchNotFound(f"no batch {batch_id[:128]}", batch_id=batch_id[:128])
        record = await self.files.get_batch(batch_id[:128])
        if record is None or record.owner != owner:
            raise error
        batch = await self.batches.get(record.id)
        if batch is None:
            raise error
        return batch, record


def _options(request: JobCreate) -> tuple[str | None, int | None]:
    return request.prompt, request.max_new_tokens


def _item(line: BatchLine) -> BatchItemCreate:
    # Each line keeps its own cache opt-out: the native item's own cache wins over the batch's.
    return BatchItemCreate(
        image_url=line.request.image_url,
        image_base64=line.request.image_base64,
        ref=line.custom_id,
        cache=None if line.request.cache else False,
    )


def _job_of(batch: Batch, row: BatchItemResult) -> Job:
    return Job(
        id=row.id,
        owner=batch.owner,
        status=row.status,
        prompt=batch.prompt,
        max_new_tokens=batch.max_new_tokens,
        created_at=batch.created_at,
        caption=row.caption,
        usage=row.usage,
    )


def _error_of(row: BatchItemResult) -> tuple[str, str]:
    if row.error is not None:
        return row.error.code, row.error.message
    # Canceled (or expired) before it ran: no error of its own, the code of a job that ended so.
    return JobEnded.code, f"the request ended {row.status} before it ran"


def _epoch(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None
