"""Turning a validated request into a stored, queued job (shared by ``POST /v1/jobs`` and ``GET /caption``)."""

from __future__ import annotations

import logging
import math
from datetime import timedelta

from api.broker.publisher import TaskQueue
from api.jobs.idempotency import IDEMPOTENCY_TTL_S, IdempotencyKeys, read_replayed, request_fingerprint
from api.jobs.prompt_limits import check_prompt_against_model
from shared.errors import InvalidRequest, QueueUnavailable
from shared.intake.uploads import check_upload, decode_base64_upload
from shared.intake.urls import validate_url
from shared.jobs.model import Job, JobCreate, JobErrorInfo, JobStatus, new_job_id, utc_now
from shared.jobs.shares import OwnerShares
from shared.jobs.store import JobStore
from shared.settings import Settings

logger = logging.getLogger(__name__)


def owner_shares(settings: Settings) -> OwnerShares:
    """The most of the queue and of upload bytes one key may hold, from the ``*_share`` settings (at least 1 job)."""
    return OwnerShares(
        max_queued_jobs=max(1, math.floor(settings.owner_queue_share * settings.max_queue_depth)),
        max_upload_bytes=max(1, math.floor(settings.owner_upload_share * settings.max_pending_upload_bytes)),
        max_total_upload_bytes=settings.max_pending_upload_bytes,
    )


class JobSubmitter:
    """Validates job requests against the settings, stores them and queues their task."""

    def __init__(self, settings: Settings, store: JobStore, queue: TaskQueue) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        # A key never outlives the job it returns.
        ttl_s = min(IDEMPOTENCY_TTL_S, settings.job_ttl_s)
        self.idempotency = IdempotencyKeys(store.redis, store.keys, ttl_s=ttl_s)
        self.shares = owner_shares(settings)

    async def submit(
        self, request: JobCreate, owner: str, upload: bytes | None = None, *, idempotency_key: str | None = None
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
        job = self.build_job(request, owner, has_file=upload is not None)
        await check_prompt_against_model(self.store, job.prompt)
        if request.image_base64 is not None:
            upload = decode_base64_upload(request.image_base64, max_upload_bytes=self.settings.max_upload_bytes)
            check_upload(upload, max_upload_bytes=self.settings.max_upload_bytes)
        if idempotency_key is None:
            await self._accept(job, upload)
            return job
        fingerprint = request_fingerprint(request, upload)
        replayed = await self.idempotency.accept_once(
            owner, idempotency_key, job.id, fingerprint, lambda: self._accept(job, upload)
        )
        return job if replayed is None else await read_replayed(self.store.get, replayed, owner, id_field="job_id")

    async def _accept(self, job: Job, upload: bytes | None) -> None:
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
            await self._fail_unqueued(job, exc)
            raise
        logger.info("job queued", extra={"job_id": job.id, "owner": job.owner, "source": job.source})

    def build_job(self, request: JobCreate, owner: str, *, has_file: bool) -> Job:
        """The job record for ``request`` (``has_file``: a multipart file came with it).

        Raises:
            InvalidRequest: no image or two, or options out of range.
            UrlNotAllowed: the image or webhook URL fails ``shared.intake.urls.validate_url``.
        """
        sources = [request.image_url is not None, request.image_base64 is not None, has_file]
        if sum(sources) != 1:
            raise InvalidRequest("give exactly one image: image_url, image_base64 or a multipart file")
        created_at = utc_now()
        return Job(
            id=new_job_id(),
            owner=owner,
            source="url" if request.image_url is not None else "upload",
            image_url=self._checked_url(request.image_url),
            prompt=self._checked_prompt(request.prompt),
            max_new_tokens=self._checked_max_new_tokens(request.max_new_tokens),
            webhook_url=self._checked_url(request.webhook_url),
            webhook_events=request.webhook_events,
            created_at=created_at,
            deadline_at=created_at + timedelta(seconds=request.deadline_s) if request.deadline_s else None,
        )

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

    async def _fail_unqueued(self, job: Job, exc: QueueUnavailable) -> None:
        # The record exists but no task will ever run it: say so on the record, if Redis lets us.
        try:
            await self.store.transition(
                job.id,
                JobStatus.FAILED,
                from_status=[JobStatus.QUEUED],
                error=JobErrorInfo(code=exc.code, message=exc.message),
                finished_at=utc_now(),
            )
        except QueueUnavailable:
            logger.warning("could not mark an unqueued job failed", extra={"job_id": job.id})
