"""Turning batch requests into stored item jobs and queued chunks, and canceling batches.

Every item is checked the way ``POST /v1/jobs`` checks one job (``JobSubmitter.build_job``)
before anything is stored, so a batch is accepted whole or not at all. Items are then
written in one Redis transaction and sent to the bulk queue ``batch_chunk_items`` job ids
per message (``CAPTION_CHUNK_TASK``), so a 10,000-item batch costs a few round trips.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import timedelta

import anyio.to_thread
from kombu.exceptions import KombuError

from api.admission import JobSubmitter
from api.jobs.idempotency import IDEMPOTENCY_TTL_S, IdempotencyKeys, read_replayed
from shared.batches.model import Batch, BatchCreate, BatchItemCreate, BatchItems, item_job_id, new_batch_id
from shared.batches.store import BatchStore
from shared.error_families import CaptionizerError
from shared.errors import InvalidRequest, QueueUnavailable, TooManyItemsInFlight
from shared.intake.uploads import check_upload, decode_base64_upload
from shared.intake.urls import validate_url
from shared.jobs.model import Job, JobCreate, JobErrorInfo, JobStatus, utc_now
from shared.jobs.store import REDIS_ERRORS, JobStore
from shared.keys import CAPTION_CHUNK_TASK
from shared.settings import Settings
from shared.webhooks.delivery import SendTask, dispatch_webhook

logger = logging.getLogger(__name__)

#: Retry-After of too_many_items_in_flight: long enough for a worker to finish a few chunks.
IN_FLIGHT_RETRY_AFTER_S = 30
# Items canceled per pipeline.
_CANCEL_PIPELINE_ITEMS = 1_000


class PreparedItems:
    """Items checked and turned into jobs (ids not yet given), with their decoded inline images."""

    def __init__(self, jobs: list[Job], uploads: list[bytes | None]) -> None:
        self.jobs = jobs
        self.uploads = uploads

    def numbered(self, batch_id: str, first: int) -> tuple[list[Job], dict[str, bytes]]:
        """The jobs with their item ids from index ``first``, and the inline images by job id."""
        jobs: list[Job] = []
        uploads: dict[str, bytes] = {}
        for offset, (job, upload) in enumerate(zip(self.jobs, self.uploads, strict=True)):
            job_id = item_job_id(batch_id, first + offset)
            jobs.append(job.model_copy(update={"id": job_id, "batch_id": batch_id}))
            if upload is not None:
                uploads[job_id] = upload
        return jobs, uploads


class BatchSubmitter:
    """Validates, stores, queues and cancels batches."""

    def __init__(
        self, settings: Settings, jobs: JobSubmitter, store: JobStore, batches: BatchStore, send_task: SendTask
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.batches = batches
        self.send_task = send_task
        self.idempotency = IdempotencyKeys(store.redis, store.keys, ttl_s=min(IDEMPOTENCY_TTL_S, settings.job_ttl_s))

    async def submit(self, request: BatchCreate, owner: str, *, idempotency_key: str | None = None) -> Batch:
        """Store and queue a new batch for ``owner``.

        Raises:
            InputError: an item or option is invalid (the message names the item).
            IdempotencyConflict: the key was used before with another body.
            TooManyItemsInFlight: the owner's items in flight would pass ``max_items_in_flight``.
            QueueUnavailable: Redis cannot be reached.
        """
        batch, prepared = self._new_batch(request, owner)
        if idempotency_key is None:
            await self._accept(batch, prepared)
            return batch
        fingerprint = hashlib.sha256(b"batch\x00" + request.model_dump_json().encode()).hexdigest()
        replayed = await self.idempotency.accept_once(
            owner, idempotency_key, batch.id, fingerprint, lambda: self._accept(batch, prepared)
        )
        if replayed is None:
            return batch
        return await read_replayed(self.batches.get, replayed, owner, id_field="batch_id")

    def _new_batch(self, request: BatchCreate, owner: str) -> tuple[Batch, PreparedItems]:
        self._check_count(request.items)
        webhook_url = self._checked_url(request.webhook_url)
        prepared = self.prepare(
            request.items,
            owner,
            prompt=request.prompt,
            max_new_tokens=request.max_new_tokens,
            webhook_url=webhook_url if request.webhook_item_events else None,
        )
        now = utc_now()
        batch = Batch(
            id=new_batch_id(),
            owner=owner,
            total=len(request.items),
            is_open=request.more_items,
            # As checked: the server's default when none was given, a blank prompt as none.
            prompt=prepared.jobs[0].prompt,
            max_new_tokens=prepared.jobs[0].max_new_tokens,
            webhook_url=webhook_url,
            webhook_item_events=request.webhook_item_events,
            created_at=now,
            expires_at=now + timedelta(seconds=self.settings.job_ttl_s),
        )
        return batch, prepared

    async def append(self, batch: Batch, request: BatchItems) -> None:
        """Add items to an open batch; without ``more_items`` this closes it (with no items, that is all it does).

        Raises:
            BatchClosed: the batch takes no more items (409).
            InputError, TooManyItemsInFlight, QueueUnavailable: as for :meth:`submit`.
        """
        if not request.items:
            await self.batches.allocate(batch.id, 0)  # no new index: only a gone or closed batch's error
            await self.batches.close(batch.id)
            return
        self._check_count(request.items)
        prepared = self.prepare(
            request.items,
            batch.owner,
            prompt=batch.prompt,
            max_new_tokens=batch.max_new_tokens,
            webhook_url=batch.webhook_url if batch.webhook_item_events else None,
        )
        await self._reserve(batch.owner, len(prepared.jobs))
        try:
            first = await self.batches.allocate(batch.id, len(prepared.jobs))
            jobs, uploads = prepared.numbered(batch.id, first)
            await self.batches.add_items(batch.id, jobs, uploads, self.settings.upload_ttl_s)
        except Exception:
            await self.batches.release_in_flight(batch.owner, len(prepared.jobs))
            raise
        await self._send_chunks(jobs)
        if not request.more_items:
            await self.batches.close(batch.id)

    def prepare(
        self,
        items: Sequence[BatchItemCreate],
        owner: str,
        *,
        prompt: str | None,
        max_new_tokens: int | None,
        webhook_url: str | None,
    ) -> PreparedItems:
        """Check every item as a job of its own; the first bad one refuses the whole request, named by index."""
        jobs: list[Job] = []
        uploads: list[bytes | None] = []
        for index, item in enumerate(items):
            try:
                request = JobCreate(
                    image_url=item.image_url,
                    image_base64=item.image_base64,
                    prompt=prompt,
                    max_new_tokens=max_new_tokens,
                    webhook_url=webhook_url,
                )
                job = self.jobs.build_job(request, owner, has_file=False)
                jobs.append(job.model_copy(update={"ref": item.ref}))
                uploads.append(self._inline_image(item))
            except CaptionizerError as exc:
                raise type(exc)(f"items[{index}]: {exc.message}", **exc.extra) from exc
        return PreparedItems(jobs, uploads)

    def _inline_image(self, item: BatchItemCreate) -> bytes | None:
        if item.image_base64 is None:
            return None
        data = decode_base64_upload(item.image_base64, max_upload_bytes=self.settings.max_upload_bytes)
        check_upload(data, max_upload_bytes=self.settings.max_upload_bytes)
        return data

    def _checked_url(self, url: str | None) -> str | None:
        if url is None:
            return None
        settings = self.settings
        return validate_url(url, allow_private=settings.allow_private_networks, allowed_ports=settings.allowed_ports)

    def _check_count(self, items: Sequence[BatchItemCreate]) -> None:
        if len(items) > self.settings.max_batch_items:
            raise InvalidRequest(f"a request may carry at most {self.settings.max_batch_items} items")

    async def _accept(self, batch: Batch, prepared: PreparedItems) -> None:
        jobs, uploads = prepared.numbered(batch.id, 0)
        await self._reserve(batch.owner, len(jobs))
        try:
            await self.batches.create(batch, jobs, uploads, self.settings.upload_ttl_s)
        except Exception:
            await self.batches.release_in_flight(batch.owner, len(jobs))
            raise
        await self._send_chunks(jobs)
        logger.info("batch queued", extra={"batch_id": batch.id, "owner": batch.owner, "items": len(jobs)})

    async def _reserve(self, owner: str, count: int) -> None:
        cap = self.settings.max_items_in_flight
        if not await self.batches.reserve_in_flight(owner, count, cap):
            raise TooManyItemsInFlight(
                f"this key would have more than {cap} batch items queued or running; retry when some have ended",
                retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
            )

    async def _send_chunks(self, jobs: Sequence[Job]) -> None:
        """Queue the items ``batch_chunk_items`` per message; items whose chunk was not sent are failed."""
        size = self.settings.batch_chunk_items
        chunks = [[job.id for job in jobs[i : i + size]] for i in range(0, len(jobs), size)]
        sent, failure = await anyio.to_thread.run_sync(self._publish, chunks)
        if failure is None:
            return
        error = QueueUnavailable("the task queue (Redis) cannot be reached")
        await self._fail_unqueued([job_id for chunk in chunks[sent:] for job_id in chunk], error)
        raise error from failure

    def _publish(self, chunks: list[list[str]]) -> tuple[int, Exception | None]:
        """Send the chunks in order; how many went, and why the next did not."""
        # One thread hop for all chunks: kombu's publish blocks on the broker.
        queue = self.store.keys.bulk_queue()
        for number, chunk in enumerate(chunks):
            try:
                self.send_task(CAPTION_CHUNK_TASK, args=[chunk], queue=queue)
            except (KombuError, *REDIS_ERRORS) as exc:
                return number, exc
        return len(chunks), None

    async def _fail_unqueued(self, job_ids: list[str], exc: QueueUnavailable) -> None:
        # Stored but never queued: fail them, so the batch still ends and says why.
        try:
            await self.store.transition_many(
                job_ids,
                JobStatus.FAILED,
                from_status=[JobStatus.QUEUED],
                error=JobErrorInfo(code=exc.code, message=exc.message),
                finished_at=utc_now(),
            )
        except QueueUnavailable:
            logger.warning("could not mark unqueued batch items failed", extra={"items": len(job_ids)})

    async def cancel(self, batch: Batch) -> None:
        """Cancel every item not yet ended and close the batch; a batch that has ended stays as it is."""
        if batch.finished_at is not None:
            return
        now = utc_now()
        await self.batches.mark_canceled(batch.id, now)
        await self.batches.close(batch.id)
        for first in range(0, batch.total, _CANCEL_PIPELINE_ITEMS):
            ids = [item_job_id(batch.id, i) for i in range(first, min(batch.total, first + _CANCEL_PIPELINE_ITEMS))]
            outcomes = await self.store.transition_many(
                ids, JobStatus.CANCELED, from_status=[JobStatus.QUEUED, JobStatus.RUNNING], finished_at=now, stage=None
            )
            canceled = [job_id for job_id, changed in zip(ids, outcomes, strict=True) if changed]
            if batch.webhook_item_events and canceled:
                await self._item_webhooks(canceled)
        logger.info("batch canceled", extra={"batch_id": batch.id})

    async def _item_webhooks(self, job_ids: list[str]) -> None:
        for job in (await self.store.get_many(job_ids)).values():
            try:
                await dispatch_webhook(self.store, self.send_task, job, JobStatus.CANCELED)
            except Exception:
                # Webhook failures never fail the cancel (STYLE §4).
                logger.exception("queueing the webhook failed", extra={"job_id": job.id, "status": "canceled"})
