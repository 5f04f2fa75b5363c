"""The hook every status change the worker makes goes through on its way out (webhooks today)."""

from __future__ import annotations

import logging

from shared.jobs import Job, JobStatus
from shared.store import JobStore
from shared.webhooks import SendTask, dispatch_webhook, is_delivered

logger = logging.getLogger(__name__)


class JobEventHook:
    """Called after each status change, with the job as it is after the change."""

    def __init__(self, store: JobStore, send_task: SendTask) -> None:
        self.store = store
        self.send_task = send_task

    async def on_job_event(self, job: Job, status: JobStatus) -> None:
        """Queue the job's webhook when it asked for one for ``status``; never fails the job."""
        if not is_delivered(job, status):
            return
        try:
            # send_task blocks for one Redis round trip; only jobs with a webhook pay it.
            await dispatch_webhook(self.store, self.send_task, job, status)
        except Exception:
            # Webhook failures never fail the job (STYLE §4); the job's record is already final.
            logger.exception("queueing the webhook failed", extra={"job_id": job.id, "status": str(status)})
