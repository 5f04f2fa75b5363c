"""The one door every job comes in through: validation, quotas, creation and publishing.

Every way in is a member of :class:`Door`: ``POST /v1/jobs``, the blog-style ``GET /caption``, each
item of ``POST /v1/batches`` and each item of an append. They all pass the same checks, against the
settings and the model's published limits, and are all created by one script (``shared/jobs/create.lua``)
that counts the key's quotas (queue share, upload bytes, batch items in flight) in the same atomic step.

A batch's items are checked one by one, and a bad item fails alone: it is stored as a failed job naming
its code, with its index and ``ref``, and the others go ahead. Only what is wrong with the request as a
whole refuses it: the schema, the item cap, a shared option (prompt, max_new_tokens, webhook URL), a
key over a quota. Cheap checks (the key's items in flight) come before any per-item work, and per-item
work yields to the event loop every few milliseconds, so 10,000 items never stall other requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

from api.broker.publisher import TaskQueue
from api.jobs.idempotency import IDEMPOTENCY_TTL_S, IdempotencyKeys, read_replayed, request_fingerprint
from api.jobs.prompt_limits import check_prompt_against_model
from shared.batches.model import Batch, BatchItemCreate, item_job_id
from shared.completion import Completion
from shared.error_families import CaptionizerError
from shared.errors import InvalidRequest, QueueUnavailable, TooManyItemsInFlight
from shared.intake.uploads import check_upload, decode_base64_upload
from shared.intake.urls import validate_url
from shared.jobs.model import Job, JobCreate, JobErrorInfo, JobStatus, new_job_id, utc_now
from shared.jobs.shares import IN_FLIGHT_RETRY_AFTER_S, OwnerShares
from shared.jobs.store import JobStore
from shared.settings import Settings
from shared.webhooks.delivery import dispatch_webhook

logger = logging.getLogger(__name__)

# Per-item checks run at most this long before yielding to the event loop (a base64 image decodes in ~1 ms/MB):
# issue 22's bound ("never block the event loop for more than a few milliseconds"), not a measured speed-up.
_SLICE_S = 0.003


class Door(StrEnum):
    """Every way a job comes in; each one goes through :class:`Admission` (tests/…/test_parity.py proves it)."""

    #: ``POST /v1/jobs``: JSON with a URL or base64 image, or a multipart file.
    JOB = "job"
    #: ``GET /caption?url=``: the blog-compatible door.
    CAPTION = "caption"
    #: Each item of ``POST /v1/batches``.
    BATCH_ITEM = "batch_item"
    #: Each item of ``POST /v1/batches/{id}/items``.
    BATCH_APPEND = "batch_append"
    #: ``POST /openai/v1/chat/completions`` (api.openai): one job, waited for like ``Prefer: wait``.
    OPENAI_CHAT = "openai_chat"
    #: Each line of a batch file run by ``POST /openai/v1/batches`` (api.openai): an item of a native batch.
    OPENAI_BATCH = "openai_batch"


def owner_shares(settings: Settings) -> OwnerShares:
    """The most of the queue, of upload bytes and of batch items in flight one key may hold, from the settings."""
    return OwnerShares(
        max_queued_jobs=max(1, math.floor(settings.owner_queue_share * settings.max_queue_depth)),
        max_upload_bytes=max(1, math.floor(settings.owner_upload_share * settings.max_pending_upload_bytes)),
        max_total_upload_bytes=settings.max_pending_upload_bytes,
        max_items_in_flight=settings.max_items_in_flight,
    )


@dataclass
class ItemOptions:
    """What every item of one batch shares, checked once for the whole request."""

    prompt: str | None
    max_new_tokens: int
    webhook_url: str | None
    #: Whether the items use the caption cache unless an item says otherwise (docs/cache.md).
    cache: bool = True


@dataclass
class AdmittedItems:
    """A request's items, checked: a job per item (ids not yet given), its inline image, and the refused ones."""

    jobs: list[Job] = field(default_factory=list)
    uploads: dict[int, bytes] = field(default_factory=dict)
    #: Item offset → why it was refused (it is stored failed with this code).
    refused: dict[int, CaptionizerError] = field(default_factory=dict)

    def numbered(self, batch_id: str, first: int) -> tuple[list[Job], dict[str, bytes]]:
        """The jobs with their item ids from index ``first``, and the inline images by job id."""
        jobs = [
            job.model_copy(update={"id": item_job_id(batch_id, first + offset), "batch_id": batch_id})
            for offset, job in enumerate(self.jobs)
        ]
        uploads = {jobs[offset].id: data for offset, data in self.uploads.items()}
        return jobs, uploads


class Admission:
    """Checks, creates and publishes jobs, whichever :class:`Door` they come through."""

    def __init__(self, settings: Settings, store: JobStore, queue: TaskQueue) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        # A key never outlives the job it returns.
        self.idempotency = IdempotencyKeys(store.redis, store.keys, ttl_s=min(IDEMPOTENCY_TTL_S, settings.job_ttl_s))
        self.shares = owner_shares(settings)
        # Every end of a job (here: items refused, jobs never queued) goes through the one completion door.
        self.completion = Completion(store, functools.partial(dispatch_webhook, store, queue.send_task))

    # --- one job: POST /v1/jobs, GET /caption -------------------------------------------------

    async def admit_job(
        self,
        request: JobCreate,
        owner: str,
        door: Door,
        upload: bytes | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Job:
        """Store and queue a job for ``owner``; ``upload`` is a multipart file already checked.

        With ``idempotency_key``, a request sent again with the same key and body returns the
        job the first one made, queued once.

        Raises:
            InputError: the request is invalid (bad URL, options out of range, a prompt too long for the
                model, not an image...).
            IdempotencyConflict: the key was used before with another body.
            QueueFull: ``max_queue_depth`` jobs, or ``max_pending_upload_bytes`` of uploads, already wait.
            OwnerQuotaExceeded: ``owner`` already holds its share of the queue or of upload bytes.
            QueueUnavailable: Redis cannot be reached.
        """
        options = await self.check_options(request.prompt, request.max_new_tokens, request.webhook_url)
        options.cache = request.cache
        sources = [request.image_url is not None, request.image_base64 is not None, upload is not None]
        if sum(sources) != 1:
            raise InvalidRequest("give exactly one image: image_url, image_base64 or a multipart file")
        if request.image_base64 is not None:
            upload = self._decoded(request.image_base64)
        job = self._job(owner, options, request.image_url, is_upload=upload is not None)
        job = job.model_copy(
            update={
                "id": new_job_id(),
                "webhook_events": request.webhook_events,
                "deadline_at": job.created_at + timedelta(seconds=request.deadline_s) if request.deadline_s else None,
            }
        )
        if idempotency_key is None:
            await self._accept(job, upload, door)
            return job
        fingerprint = request_fingerprint(request, upload)
        replayed = await self.idempotency.accept_once(
            owner, idempotency_key, job.id, fingerprint, lambda: self._accept(job, upload, door)
        )
        return job if replayed is None else await read_replayed(self.store.get, replayed, owner, id_field="job_id")

    async def _accept(self, job: Job, upload: bytes | None, door: Door) -> None:
        # The queue's depth is checked by the create script itself: one round trip.
        await self.store.create(
            job,
            upload=upload,
            upload_ttl_s=self.settings.upload_ttl_s,
            shares=self.shares,
            max_queue_depth=self.settings.max_queue_depth,
        )
        try:
            await self.queue.enqueue_caption(job.id)
        except QueueUnavailable as exc:
            await self.fail_unqueued([job.id], exc)
            raise
        logger.info("job queued", extra={"job_id": job.id, "owner": job.owner, "source": job.source, "door": door})

    # --- what every door checks ---------------------------------------------------------------

    async def check_options(
        self, prompt: str | None, max_new_tokens: int | None, webhook_url: str | None
    ) -> ItemOptions:
        """The options of a request, checked against the settings and the model's published limits.

        Raises:
            InvalidRequest: the prompt or max_new_tokens is out of range.
            PromptTooLong: the prompt surely takes more tokens than the loaded model does.
            UrlNotAllowed: the webhook URL fails ``shared.intake.urls.validate_url``.
        """
        checked_prompt = self._checked_prompt(prompt)
        options = ItemOptions(
            checked_prompt, self._checked_max_new_tokens(max_new_tokens), self._checked_url(webhook_url)
        )
        await check_prompt_against_model(self.store, checked_prompt)
        return options

    def _job(self, owner: str, options: ItemOptions, image_url: str | None, *, is_upload: bool) -> Job:
        return Job(
            id="",
            owner=owner,
            source="upload" if is_upload else "url",
            image_url=self._checked_url(image_url),
            prompt=options.prompt,
            max_new_tokens=options.max_new_tokens,
            webhook_url=options.webhook_url,
            use_cache=options.cache,
            created_at=utc_now(),
        )

    def _decoded(self, image_base64: str) -> bytes:
        data = decode_base64_upload(image_base64, max_upload_bytes=self.settings.max_upload_bytes)
        check_upload(data, max_upload_bytes=self.settings.max_upload_bytes)
        return data

    def _checked_url(self, url: str | None) -> str | None:
        if url is None:
            return None
        return validate_url(
            url, allow_private=self.settings.allow_private_networks, allowed_ports=self.settings.allowed_ports
        )

    def _checked_prompt(self, prompt: str | None) -> str | None:
        if prompt is None or not prompt.strip():
            return None
        if len(prompt) > self.settings.max_prompt_chars:
            raise InvalidRequest(f"prompt is longer than {self.settings.max_prompt_chars} characters")
        return prompt

    def _checked_max_new_tokens(self, max_new_tokens: int | None) -> int:
        if max_new_tokens is None:
            return self.settings.default_max_new_tokens
        if max_new_tokens > self.settings.max_new_tokens_limit:
            raise InvalidRequest(f"max_new_tokens must be at most {self.settings.max_new_tokens_limit}")
        return max_new_tokens

    # --- many items: each item of a batch or of an append --------------------------------------

    async def check_items_in_flight(self, owner: str, count: int) -> None:
        """The cheap check, before any per-item work: would ``count`` more items pass the key's cap?

        ``create.lua`` checks again, atomically, when the items are stored; this one spares the work
        of checking 10,000 items that could never be stored.

        Raises:
            TooManyItemsInFlight: the key's items in flight would pass ``max_items_in_flight``.
        """
        cap = self.settings.max_items_in_flight
        raw = await self.store.redis.get(self.store.keys.items_in_flight(owner))
        held = max(0, int(raw or 0))
        if held + count > cap:
            raise TooManyItemsInFlight(
                f"this key has {held} batch items queued or running, and would pass its {cap}; "
                "retry when some have ended",
                retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
            )

    async def admit_items(
        self, items: Sequence[BatchItemCreate], owner: str, door: Door, options: ItemOptions
    ) -> AdmittedItems:
        """Check each item as a job of its own; a bad item is refused alone (with its code), the others go on.

        Yields to the event loop every few milliseconds, so checking 10,000 items stalls no other request.
        """
        admitted = AdmittedItems()
        slice_ends = time.perf_counter() + _SLICE_S
        for offset, item in enumerate(items):
            try:
                upload = self._decoded(item.image_base64) if item.image_base64 is not None else None
                job = self._job(owner, options, item.image_url, is_upload=upload is not None)
                if upload is not None:
                    admitted.uploads[offset] = upload
            except CaptionizerError as exc:
                admitted.refused[offset] = exc
                # The refused URL is not stored: it may carry a token, and it will never be fetched.
                job = self._job(owner, options, None, is_upload=item.image_base64 is not None)
            # An item's own cache choice wins over its request's (or batch's): the same rule at every door.
            use_cache = options.cache if item.cache is None else item.cache
            admitted.jobs.append(job.model_copy(update={"ref": item.ref, "use_cache": use_cache}))
            if time.perf_counter() >= slice_ends:
                await asyncio.sleep(0)
                slice_ends = time.perf_counter() + _SLICE_S
        if admitted.refused:
            logger.info("batch items refused", extra={"owner": owner, "door": door, "items": len(admitted.refused)})
        return admitted

    async def publish_items(self, jobs: Sequence[Job], admitted: AdmittedItems) -> None:
        """Queue the stored items that passed, and fail the refused ones and any whose message was not sent.

        Raises:
            QueueUnavailable: no task message could be sent (the items are failed, so the batch still ends).
        """
        refused = [jobs[offset].id for offset in admitted.refused]
        passed = [job.id for offset, job in enumerate(jobs) if offset not in admitted.refused]
        owner = jobs[0].owner if jobs else ""
        unsent = await self.queue.enqueue_item_messages(owner, passed, self.settings.batch_chunk_items)
        await self._fail_refused(jobs, admitted.refused)
        if unsent:
            error = QueueUnavailable("the task queue (Redis) cannot be reached")
            await self.fail_unqueued(unsent, error)
            raise error
        if refused:
            logger.info("batch items failed at admission", extra={"items": len(refused)})

    async def _fail_refused(self, jobs: Sequence[Job], refused: dict[int, CaptionizerError]) -> None:
        # One pipeline per distinct error, not a round trip per item: 10,000 bad items cost a few.
        by_error: dict[tuple[str, str], list[str]] = {}
        for offset, exc in refused.items():
            by_error.setdefault((exc.code, exc.message), []).append(jobs[offset].id)
        now = utc_now()
        for (code, message), job_ids in by_error.items():
            error = JobErrorInfo(code=code, message=message)
            await self.completion.end_many(job_ids, JobStatus.FAILED, [JobStatus.QUEUED], error=error, finished_at=now)

    async def fail_unqueued(self, job_ids: list[str], exc: QueueUnavailable) -> None:
        """Fail jobs that were stored but never queued: no task will ever run them (if Redis lets us say so)."""
        error = JobErrorInfo(code=exc.code, message=exc.message)
        try:
            await self.completion.end_many(
                job_ids, JobStatus.FAILED, [JobStatus.QUEUED], error=error, finished_at=utc_now()
            )
        except QueueUnavailable:
            logger.warning("could not mark unqueued jobs failed", extra={"jobs": len(job_ids)})


def batch_item_options(batch: Batch) -> ItemOptions:
    """The options a batch's appended items share: the batch's own, checked when it was created."""
    return ItemOptions(
        batch.prompt, batch.max_new_tokens, batch.webhook_url if batch.webhook_item_events else None, batch.cache
    )
