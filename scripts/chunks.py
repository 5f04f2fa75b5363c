"""Batch items stored as jobs and queued as chunk messages, straight through ``shared/``: for tests and benches.

This is what the batch API does behind ``POST /v1/batches`` (store each item as a queued job,
send chunks of ids to the bulk queue), without HTTP, so the worker's side can be driven and
measured on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from celery import Celery
from redis.asyncio import Redis

from shared.broker.config import celery_config
from shared.broker.routing import batch_items_route
from shared.jobs.model import Job, new_job_id
from shared.jobs.store import JobStore
from shared.keys import CAPTION_TASK, Keys
from shared.settings import Settings


class ChunkSender:
    """Stores jobs in a stack's Redis and queues them, as chunks (bulk) or one by one (interactive)."""

    def __init__(self, redis_url: str, key_prefix: str = "captionizer") -> None:
        self.settings = Settings(redis_url=redis_url, key_prefix=key_prefix)
        self.keys = Keys(key_prefix)
        self.app = Celery("chunk-sender", set_as_current=False)
        self.app.conf.update(celery_config(self.settings))

    def store(self, urls: Sequence[str], **fields: object) -> list[str]:
        """Store one queued job per URL; returns their ids."""
        jobs = [Job(id=new_job_id(), image_url=url, **fields) for url in urls]  # type: ignore[arg-type]
        asyncio.run(self._create(jobs))
        return [job.id for job in jobs]

    def send_chunks(self, job_ids: Sequence[str], chunk_size: int, owner: str | None = None) -> int:
        """Queue ``job_ids`` on the bulk queue, ``chunk_size`` per message (naming ``owner``, if given).

        Straight onto the queue, past the keys' backlogs and their caps (shared.broker.bulk_backlog).
        Returns the number of messages.
        """
        chunks = [list(job_ids[i : i + chunk_size]) for i in range(0, len(job_ids), chunk_size)]
        for chunk in chunks:
            route = batch_items_route(self.keys, chunk, owner)
            self.app.send_task(route.task, args=route.args, queue=route.queue)
        return len(chunks)

    def send_single(self, job_id: str) -> None:
        """Queue one job on the interactive caption queue, as ``POST /v1/jobs`` does."""
        self.app.send_task(CAPTION_TASK, args=[job_id], queue=self.keys.caption_queue())

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()

    async def _create(self, jobs: Sequence[Job]) -> None:
        redis = Redis.from_url(self.settings.redis_url)
        try:
            store = JobStore(redis, self.keys, self.settings.job_ttl_s)
            for start in range(0, len(jobs), 500):
                await asyncio.gather(*(store.create(job) for job in jobs[start : start + 500]))
        finally:
            await redis.aclose()
