"""A client's batches: creating one, appending items, canceling it; each item comes in through the one door.

Every item passes :class:`api.admission.Admission` as :attr:`~api.admission.Door.BATCH_ITEM` or
:attr:`~api.admission.Door.BATCH_APPEND`: checked as a job of its own (a bad item fails alone, named
by index and ``ref``), created by ``shared/jobs/create.lua`` with the key's quotas counted in the same
step, and published ``batch_chunk_items`` job ids per task message, so a 10,000-item batch costs a
few round trips.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from api.admission import Admission, AdmittedItems, Door, ItemOptions, batch_item_options
from api.jobs.idempotency import IDEMPOTENCY_TTL_S, IdempotencyKeys, read_replayed
from shared.batches.model import Batch, BatchCreate, BatchItemCreate, BatchItems, item_job_id, new_batch_id
from shared.batches.store import BatchStore
from shared.error_families import CaptionizerError
from shared.errors import InvalidRequest
from shared.jobs.model import Job, JobErrorInfo, JobStatus, utc_now
from shared.jobs.store import JobStore
from shared.settings import Settings
from shared.webhooks.delivery import SendTask

logger = logging.getLogger(__name__)

# Items canceled per pipeline.
_CANCEL_PIPELINE_ITEMS = 1_000


class BatchSubmitter:
    """Validates, stores, queues and cancels batches."""

    def __init__(
        self, settings: Settings, admission: Admission, store: JobStore, batches: BatchStore, send_task: SendTask
    ) -> None:
        self.settings = settings
        self.admission = admission
        self.store = store
        self.batches = batches
        self.send_task = send_task
        self.idempotency = IdempotencyKeys(store.redis, store.keys, ttl_s=min(IDEMPOTENCY_TTL_S, settings.job_ttl_s))

    async def submit(self, request: BatchCreate, owner: str, *, idempotency_key: str | None = None) -> Batch:
        """Store and queue a new batch for ``owner``; bad items are stored failed, the others queued.

        Raises:
            InvalidRequest: too many items, or a shared option out of range.
            PromptTooLong, UrlNotAllowed: the shared prompt or webhook URL is refused (every item would be).
            IdempotencyConflict: the key was used before with another body.
            TooManyItemsInFlight, OwnerQuotaExceeded, QueueFull: a quota of the key is full; nothing is stored.
            QueueUnavailable: Redis cannot be reached.
        """
        self._check_count(request.items)
        await self.admission.check_items_in_flight(owner, len(request.items))
        checked = await self.admission.check_options(request.prompt, request.max_new_tokens, request.webhook_url)
        item_webhook = checked.webhook_url if request.webhook_item_events else None
        options = ItemOptions(checked.prompt, checked.max_new_tokens, item_webhook)
        admitted = await self.admission.admit_items(request.items, owner, Door.BATCH_ITEM, options)
        now = utc_now()
        batch = Batch(
            id=new_batch_id(),
            owner=owner,
            total=len(request.items),
            is_open=request.more_items,
            # As checked: the server's default when none was given, a blank prompt as none.
            prompt=options.prompt,
            max_new_tokens=options.max_new_tokens,
            webhook_url=checked.webhook_url,
            webhook_item_events=request.webhook_item_events,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.job_ttl_s),
        )
        if idempotency_key is None:
            await self._accept(batch, admitted)
            return batch
        fingerprint = hashlib.sha256(b"batch\x00" + request.model_dump_json().encode()).hexdigest()
        replayed = await self.idempotency.accept_once(
            owner, idempotency_key, batch.id, fingerprint, lambda: self._accept(batch, admitted)
        )
        if replayed is None:
            return batch
        return await read_replayed(self.batches.get, replayed, owner, id_field="batch_id")

    async def append(self, batch: Batch, request: BatchItems) -> None:
        """Add items to an open batch; without ``more_items`` this closes it (with no items, that is all it does).

        Raises:
            BatchClosed: the batch takes no more items (409).
            InvalidRequest, TooManyItemsInFlight, OwnerQuotaExceeded, QueueUnavailable: as for :meth:`submit`.
        """
        if not request.items:
            await self.batches.allocate(batch.id, 0)  # no new index: only a gone or closed batch's error
            await self.batches.close(batch.id)
            return
        self._check_count(request.items)
        await self.admission.check_items_in_flight(batch.owner, len(request.items))
        admitted = await self.admission.admit_items(
            request.items, batch.owner, Door.BATCH_APPEND, batch_item_options(batch)
        )
        first = await self.batches.allocate(batch.id, len(admitted.jobs))
        jobs, uploads = admitted.numbered(batch.id, first)
        try:
            await self.batches.add_items(jobs, uploads, self.settings.upload_ttl_s, self.admission.shares)
        except CaptionizerError as exc:
            await self._give_back(batch, first, jobs, exc)
            raise
        await self.admission.publish_items(jobs, admitted)
        if not request.more_items:
            await self.batches.close(batch.id)

    async def _give_back(self, batch: Batch, first: int, jobs: list[Job], exc: CaptionizerError) -> None:
        # Refused (a quota): the indexes go back, unless another append took indexes after them; then
        # they are stored and failed with the refusal's code, so the batch's count of items still ends.
        if await self.batches.release(batch.id, first, len(jobs)):
            return
        await self.batches.add_placeholders(jobs)
        await self.admission.completion.end_many(
            [job.id for job in jobs],
            JobStatus.FAILED,
            [JobStatus.QUEUED],
            error=JobErrorInfo(code=exc.code, message=exc.message),
            finished_at=utc_now(),
        )

    def _check_count(self, items: Sequence[BatchItemCreate]) -> None:
        if len(items) > self.settings.max_batch_items:
            raise InvalidRequest(f"a request may carry at most {self.settings.max_batch_items} items")

    async def _accept(self, batch: Batch, admitted: AdmittedItems) -> None:
        jobs, uploads = admitted.numbered(batch.id, 0)
        await self.batches.create(batch, jobs, uploads, self.settings.upload_ttl_s, self.admission.shares)
        await self.admission.publish_items(jobs, admitted)
        logger.info("batch queued", extra={"batch_id": batch.id, "owner": batch.owner, "items": len(jobs)})

    async def cancel(self, batch: Batch) -> None:
        """Cancel every item not yet ended and close the batch; a batch that has ended stays as it is."""
        if batch.finished_at is not None:
            return
        now = utc_now()
        await self.batches.mark_canceled(batch.id, now)
        await self.batches.close(batch.id)
        for first in range(0, batch.total, _CANCEL_PIPELINE_ITEMS):
            ids = [item_job_id(batch.id, i) for i in range(first, min(batch.total, first + _CANCEL_PIPELINE_ITEMS))]
            await self.admission.completion.end_many(
                ids, JobStatus.CANCELED, [JobStatus.QUEUED, JobStatus.RUNNING], finished_at=now, stage=None
            )
        logger.info("batch canceled", extra={"batch_id": batch.id})
