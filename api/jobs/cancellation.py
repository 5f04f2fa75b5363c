"""Canceling a job: a queued one never runs, a running one's result is discarded, a finished one stays as it is.

The cancel is one atomic transition (``queued|running -> canceled``). A worker that
picks the job up afterwards finds it final and skips it; a worker already running it
finds its own final transition refused and drops the caption (``worker.captioning.pipeline``).
"""

from __future__ import annotations

import functools
import logging

from shared.completion import Completion
from shared.errors import JobNotCancelable, JobNotFound
from shared.jobs.model import Job, JobStatus, utc_now
from shared.jobs.store import JobStore
from shared.webhooks.delivery import SendTask, dispatch_webhook

logger = logging.getLogger(__name__)

#: The statuses a cancel can leave.
CANCELABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


async def cancel_job(store: JobStore, send_task: SendTask, job: Job) -> Job:
    """Cancel ``job`` and queue its webhook; returns the job as canceled.

    Raises:
        JobNotCancelable: the job has already ended (409).
        JobNotFound: the job expired meanwhile (404).
        QueueUnavailable: Redis cannot be reached.
    """
    if job.status.is_final:
        raise _not_cancelable(job)
    completion = Completion(store, functools.partial(dispatch_webhook, store, send_task))
    canceled = await completion.end(job, JobStatus.CANCELED, CANCELABLE, finished_at=utc_now(), stage=None)
    current = await store.get(job.id)
    if current is None:
        raise JobNotFound(f"no job {job.id}", job_id=job.id)
    if canceled is None:
        # It ended between our read and the transition: whatever it ended as stands.
        raise _not_cancelable(current)
    logger.info("job canceled", extra={"job_id": job.id, "from_status": str(job.status)})
    return current


def _not_cancelable(job: Job) -> JobNotCancelable:
    return JobNotCancelable(f"the job has already ended ({job.status})", job_id=job.id, job_status=str(job.status))
