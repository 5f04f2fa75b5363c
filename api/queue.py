"""The API's side of the Celery queue: it sends tasks by name and never imports the worker."""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from celery import Celery
from kombu.exceptions import KombuError

from shared.celery_config import celery_config
from shared.errors import QueueUnavailable
from shared.keys import CAPTION_TASK, Keys
from shared.settings import Settings
from shared.store import map_redis_errors

logger = logging.getLogger(__name__)


class TaskQueue:
    """Publishes caption tasks (and, for ``shared.webhooks``, any task) by name."""

    def __init__(self, settings: Settings) -> None:
        self.keys = Keys(settings.key_prefix)
        # set_as_current=False: this client must not become the process's default app.
        self.celery = Celery("captionizer-api", set_as_current=False)
        self.celery.conf.update(celery_config(settings))
        # Fail fast when Redis is down: the client answers 503 rather than holding the request.
        self.celery.conf.update(
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.2,
            },
            broker_connection_timeout=2,
        )

    def send_task(self, name: str, *, args: list[Any], queue: str, argsrepr: str | None = None) -> object:
        """Celery's ``send_task`` (blocking); matches ``shared.webhooks.SendTask``."""
        # argsrepr: what Celery's log lines print in place of the arguments (no URLs, see shared.webhooks).
        return self.celery.send_task(name, args=args, queue=queue, argsrepr=argsrepr)

    async def enqueue_caption(self, job_id: str) -> None:
        """Queue the caption task of ``job_id``, off the event loop (kombu's publish blocks)."""
        try:
            with map_redis_errors("the task queue (Redis)"):
                await anyio.to_thread.run_sync(self._send_caption, job_id)
        except KombuError as exc:
            # kombu wraps the broker's errors (a full Redis's OOM included) in its OperationalError.
            raise QueueUnavailable("the task queue (Redis) cannot be reached") from exc

    def _send_caption(self, job_id: str) -> None:
        # The task id is the job id, so broker-side traces name the job.
        self.celery.send_task(CAPTION_TASK, args=[job_id], task_id=job_id, queue=self.keys.caption_queue())

    def close(self) -> None:
        """Release the broker connections."""
        self.celery.close()
