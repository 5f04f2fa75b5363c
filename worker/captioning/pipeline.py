"""One delivery of one job: queued → running → succeeded or failed, with its timings.

A repeat of a URL its server said is still fresh is answered from the cache before the job
runs: queued → succeeded (or failed, for a cached input error), with no download, no
decode and no ``running`` change or event, the two writes of a captioned job's start and
end folded into one (worker.caching, docs/cache.md "Fresh URLs").

Every status change goes through :meth:`JobStore.transition`; when it returns False
the job was canceled, expired or already finished by another delivery (normal under
``acks_late``), and this delivery stops without writing anything else. Errors are
caught here, at the task boundary: a CaptionizerError fails the job with its code,
anything else becomes ``internal_error`` and is logged with the job id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shared.completion import Completion
from shared.error_families import CaptionizerError
from shared.errors import InternalError, JobTimedOut, UploadExpired, WorkerCrashed
from shared.jobs.model import CacheOutcome, Job, JobErrorInfo, JobStatus, JobTimings, JobUsage, utc_now
from shared.jobs.store import JobStore
from shared.settings import Settings
from worker.caching import CaptionCache, Claim
from worker.captioning import metrics
from worker.captioning.batching import Batcher, BatchResult
from worker.captioning.prompts import PromptShares
from worker.intake.fetch_shares import FetchShares, origin_of
from worker.intake.images import ImageBytes
from worker.recovery.redelivery import DeliveryGate

logger = logging.getLogger(__name__)

#: Downloads the image at a URL, hashing it as it arrives (``worker.intake.images.fetch_image_bytes`` bound to a session).
FetchFn = Callable[[str], Awaitable[ImageBytes]]
#: Decodes image bytes and prepares the model's input from them (decode, resize, normalise), off the
#: event loop (decoding in a child process, preprocessing in a thread), many at once, so nothing per
#: image is left for the thread that calls the model. Cancelling it stops the decode (worker.intake.decoders).
PrepareFn = Callable[[bytes], Awaitable[Any]]
#: Called after every status change, with the job after the change.
EventFn = Callable[[Job, JobStatus], Awaitable[object]]


@dataclass(frozen=True)
class _Captioned:
    caption: str
    fetch_s: float
    #: None for a cache hit: no batch, no model.
    batch: BatchResult | None
    cache: CacheOutcome | None = None
    cached_from: str | None = None


@dataclass(frozen=True)
class _FreshHit:
    """A queued job's answer from its fresh URL's cache link, and how long finding it took."""

    claim: Claim
    peek_s: float


class JobRunner:
    """Runs jobs by id: reads the record, fetches and decodes the image, batches it, records the result."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        batcher: Batcher,
        *,
        fetch: FetchFn,
        prepare: PrepareFn,
        model_name: str,
        on_event: EventFn,
        count_tokens: Callable[[str | None], int] | None = None,
        gate: DeliveryGate | None = None,
        prompts: PromptShares | None = None,
        fetches: FetchShares | None = None,
        cache: CaptionCache | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.batcher = batcher
        self.fetch = fetch
        self.prepare = prepare
        self.model_name = model_name
        # The API has no tokenizer (it never imports transformers): usage is counted here, once per job.
        self.count_tokens = count_tokens or _count_words
        self.on_event = on_event
        # Every end of a job goes through the one completion door; this process adds its metrics.
        self.completion = Completion(store, on_event, self._record)
        self.gate = gate or DeliveryGate()
        self.prompts = prompts or PromptShares(settings.max_prompts_per_key)
        self.fetches = fetches or FetchShares(settings.max_fetches_per_key)
        #: None: no cache at all (tests of the pipeline alone); else jobs may hit, or wait for an identical one.
        self.cache = cache

    async def run(self, job_id: str, *, interactive: bool = True) -> JobStatus | None:
        """Run one delivery of ``job_id``; returns the final status it wrote, or None if it wrote none.

        Raises:
            NotAdmittedError: a redelivered job found no moment alone in this worker in time.
        """
        return await self.run_seen(job_id, await self.store.get(job_id), interactive=interactive)

    async def run_seen(self, job_id: str, seen: Job | None, *, interactive: bool) -> JobStatus | None:
        """Like :meth:`run`, with the job's record already read (a chunk reads all of its jobs at once)."""
        # Already running: its last worker died (maybe of it), so it runs alone (worker.recovery.redelivery).
        suspect = seen is not None and seen.status is JobStatus.RUNNING
        async with self.gate.admit(suspect=suspect, timeout_s=self.settings.job_time_limit_s):
            # A suspect waited for its turn: read it again. An ordinary job's status is re-checked
            # by the transition to running anyway.
            job = await self.store.get(job_id) if suspect else seen
            return await self._run_admitted(job_id, job, interactive)

    async def _run_admitted(self, job_id: str, seen: Job | None, interactive: bool) -> JobStatus | None:
        hit = await self._fresh_hit_before_start(seen)
        if seen is not None and hit is not None:
            return await self._end_from_queue(seen, hit)
        job = await self._start(job_id, seen)
        if job is None or job.status is not JobStatus.RUNNING:
            return job.status if job is not None else None
        if job.attempts > self.settings.max_delivery_attempts:
            # Delivered again and again because its worker keeps dying: a poison job, stop here.
            return await self._fail(job, WorkerCrashed(f"the job's worker died {job.attempts - 1} times"))
        try:
            # asyncio.timeout, not wait_for: the job runs in this task, without a task of its own per job.
            async with asyncio.timeout(self.settings.job_time_limit_s):
                done = await self._caption(job, interactive)
        except CaptionizerError as exc:
            return await self._fail(job, exc)
        except TimeoutError:
            return await self._fail(job, JobTimedOut(f"the job ran past {self.settings.job_time_limit_s} s"))
        except Exception:
            logger.exception("job failed unexpectedly", extra={"job_id": job.id})
            return await self._fail(job, InternalError(f"unexpected error; see the worker logs for {job.id}"))
        return await self._succeed(job, done)

    async def _start(self, job_id: str, job: Job | None) -> Job | None:
        """The job moved to running (or expired), or None when this delivery must not run it."""
        if job is None or job.status.is_final:
            logger.info("job skipped", extra={"job_id": job_id, "status": job.status if job else "missing"})
            return None
        now = utc_now()
        if _expired(job, now):
            return await self._end(job, JobStatus.EXPIRED, JobStatus.QUEUED, finished_at=now)
        fields: dict[str, Any] = {"started_at": now, "stage": "fetching"}
        if not await self.store.transition(job_id, JobStatus.RUNNING, **fields):
            logger.info("job skipped", extra={"job_id": job_id, "reason": "started elsewhere or canceled"})
            return None
        running = job.model_copy(update={**fields, "status": JobStatus.RUNNING, "attempts": job.attempts + 1})
        queue_wait_s = _seconds_between(job.created_at, now)
        logger.info("job started", extra={"job_id": job_id, "attempts": running.attempts, "queue_wait_s": queue_wait_s})
        await self.on_event(running, JobStatus.RUNNING)
        return running

    async def _fresh_hit_before_start(self, job: Job | None) -> _FreshHit | None:
        """The cache's answer to a queued job's fresh URL, found without a download; None to run the job."""
        if self.cache is None or job is None or job.status is not JobStatus.QUEUED:
            return None  # a redelivered job found running runs as it is, alone (worker.recovery.redelivery)
        if _expired(job, utc_now()):
            return None  # _start expires it
        began = time.perf_counter()
        claim = await self.cache.fresh_hit(job)
        return _FreshHit(claim, time.perf_counter() - began) if claim is not None else None

    async def _end_from_queue(self, job: Job, hit: _FreshHit) -> JobStatus | None:
        """End a queued job with its fresh URL's cached result: it never runs."""
        taken = job.model_copy(update={"started_at": utc_now()})
        try:
            caption = hit.claim.hit_caption()
        except CaptionizerError as exc:  # a cached input error (not_an_image...), as the first job failed
            return await self._fail(taken, exc, from_status=JobStatus.QUEUED)
        done = _Captioned(caption, hit.peek_s, None, "hit", hit.claim.cached_from)
        return await self._succeed(taken, done, from_status=JobStatus.QUEUED)

    async def _caption(self, job: Job, interactive: bool) -> _Captioned:
        began = time.perf_counter()
        image = await self._read_image(job)
        data = image.data
        if self.cache is None:
            return await self._compute(job, data, began, interactive)
        # A hit ends here, before decoding; an identical job in flight is waited for (worker.caching).
        async with self.cache.claim(job, image.sha256, fresh_s=image.fresh_s) as claim:
            if claim.entry is not None:
                caption = claim.hit_caption()
                return _Captioned(caption, time.perf_counter() - began, None, "hit", claim.cached_from)
            done = await self._compute(job, data, began, interactive)
            await self.cache.record(claim, done.caption)
        return replace(done, cache=claim.outcome)

    async def _compute(self, job: Job, data: bytes, began: float, interactive: bool) -> _Captioned:
        # Off the loop, which keeps fetching other jobs' images, and off the model's thread: decoding
        # and the processor run in parallel; the job's deadline cancels a decode still running.
        inputs = await self.prepare(data)
        fetch_s = time.perf_counter() - began
        # A key with many distinct prompts waits here rather than splitting everyone's batches (worker.captioning.prompts).
        async with self.prompts.hold(job.owner, job.options.prompt):
            result = await self.batcher.caption(inputs, job.options, interactive=interactive)
        return _Captioned(result.caption, fetch_s, result)

    async def _read_image(self, job: Job) -> ImageBytes:
        if job.source == "upload":
            data = await self.store.read_upload(job.id)
            if data is None:
                raise UploadExpired("the uploaded image expired before a worker read it")
            return ImageBytes.of(data)
        if job.image_url is None:
            raise InternalError("the job has neither an image URL nor an upload")
        # A key with images on slow hosts waits for its own fetches, never holds all of them, and a fetch
        # waiting for a busy host's connection holds nothing meanwhile (worker.intake.fetch_shares).
        async with self.fetches.hold(job.owner, origin_of(job.image_url)):
            return await self.fetch(job.image_url)

    async def _succeed(
        self, job: Job, done: _Captioned, *, from_status: JobStatus = JobStatus.RUNNING
    ) -> JobStatus | None:
        finished_at = utc_now()
        batch = done.batch
        timings = JobTimings(
            queue_wait_s=_seconds_between(job.created_at, job.started_at),
            fetch_s=round(done.fetch_s, 6),
            batch_wait_s=round(batch.batch_wait_s, 6) if batch else None,
            generate_s=round(batch.generate_s, 6) if batch else None,
            batch_size=batch.batch_size if batch else None,
            batch_id=batch.batch_id if batch else None,
            total_s=_seconds_between(job.created_at, finished_at),
        )
        ended = await self._end(
            job, JobStatus.SUCCEEDED, from_status,
            caption=done.caption, model=self.model_name, finished_at=finished_at, timings=timings,
            # Written again for a job that ran; for one ended from the queue, when it was taken.
            started_at=job.started_at,
            usage=JobUsage(
                prompt_tokens=self.count_tokens(job.prompt), completion_tokens=self.count_tokens(done.caption)
            ),
            cache=done.cache, cached_from=done.cached_from,
        )  # fmt: skip
        if ended is None:
            return None
        metrics.JOB_FETCH.observe(done.fetch_s)
        if batch is not None:
            metrics.JOB_BATCH_WAIT.observe(batch.batch_wait_s)
        return JobStatus.SUCCEEDED

    async def _fail(
        self, job: Job, exc: CaptionizerError, *, from_status: JobStatus = JobStatus.RUNNING
    ) -> JobStatus | None:
        upstream_status = exc.extra.get("upstream_status")
        error = JobErrorInfo(
            code=exc.code,
            message=exc.message,
            upstream_status=upstream_status if isinstance(upstream_status, int) else None,
        )
        finished_at = utc_now()
        timings = job.timings.model_copy(
            update={
                "queue_wait_s": _seconds_between(job.created_at, job.started_at),
                "total_s": _seconds_between(job.created_at, finished_at),
            }
        )
        # A cached input error (worker.caching) fails the job as the first one did, and says so.
        cached = {"cache": "hit", "cached_from": exc.extra.get("cached_from")} if exc.extra.get("cache") else {}
        ended = await self._end(
            job, JobStatus.FAILED, from_status, error=error, started_at=job.started_at,
            finished_at=finished_at, timings=timings, **cached,
        )  # fmt: skip
        return JobStatus.FAILED if ended is not None else None

    async def _end(self, job: Job, status: JobStatus, source: JobStatus, **fields: Any) -> Job | None:
        """Write a final status; None when the job had moved on (e.g. canceled meanwhile)."""
        fields["stage"] = None
        return await self.completion.end(job, status, [source], **fields)

    def _record(self, job: Job) -> None:
        code = job.error.code if job.error else ""
        metrics.JOBS_FINISHED.labels(status=str(job.status), code=code).inc()
        if job.timings.queue_wait_s is not None:
            metrics.JOB_QUEUE_WAIT.observe(job.timings.queue_wait_s)
        if job.timings.total_s is not None:
            metrics.JOB_DURATION.observe(job.timings.total_s)
        logger.info(
            "job ended",
            extra={
                "job_id": job.id,
                "status": str(job.status),
                "code": code or None,
                "model_batch_id": job.timings.batch_id,
                "duration_s": job.timings.total_s,
            },
        )


def _expired(job: Job, now: datetime) -> bool:
    """A queued job whose deadline passed before a worker started it: it expires instead of running."""
    return job.status is JobStatus.QUEUED and job.deadline_at is not None and now > job.deadline_at


def _count_words(text: str | None) -> int:
    return len((text or "").split())


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)
