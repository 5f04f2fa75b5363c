"""The one door every end of a job goes through, and what follows a status change, exactly once.

Whatever ends a job (the worker with a caption or an error, a cancel, an expired deadline, a batch's
cancel, a failure before the job was ever queued) calls :meth:`Completion.end` or
:meth:`Completion.end_many`. The status change itself is one run of ``shared/jobs/transition.lua``,
which in the same atomic step gives the owner's quotas back and keeps a batch item's batch counts
(and ends the batch, listing it for the API's ``BatchCloser``, which sends the batch's own event).
Only the caller whose transition changed the job goes on, so the rest happens once however many
processes race: the upload is deleted, the process records its metrics (``on_ended``), and the
``job.*`` event is queued (``on_event``, normally :func:`shared.webhooks.delivery.dispatch_webhook`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from shared.jobs.model import Job, JobStatus
from shared.jobs.store import JobStore

logger = logging.getLogger(__name__)

#: Announces a job's status change (its webhook); never raises for the caller.
EventFn = Callable[[Job, JobStatus], Awaitable[object]]
#: Records an ended job in the process's own metrics and logs.
EndedFn = Callable[[Job], None]


def _ignore(job: Job) -> None:
    del job


class Completion:
    """Ends jobs through :meth:`JobStore.transition` and does what follows, once per job that changed."""

    def __init__(self, store: JobStore, on_event: EventFn, on_ended: EndedFn = _ignore) -> None:
        self.store = store
        self.on_event = on_event
        self.on_ended = on_ended

    async def end(self, job: Job, status: JobStatus, from_status: Iterable[JobStatus], **fields: Any) -> Job | None:
        """Move ``job`` (as last read) to the final ``status``; the ended job, or None when it had moved on.

        None is not an error: a duplicate delivery, or a job canceled while it ran.
        """
        if not status.is_final:
            raise ValueError(f"{status} does not end a job")
        if not await self.store.transition(job.id, status, from_status=from_status, **fields):
            logger.info("result discarded", extra={"job_id": job.id, "status": str(status)})
            return None
        ended = job.model_copy(update={**fields, "status": status})
        await self._after(ended, status)
        return ended

    async def end_many(
        self, job_ids: Sequence[str], status: JobStatus, from_status: Iterable[JobStatus], **fields: Any
    ) -> list[str]:
        """:meth:`end` for many jobs in one pipeline (a batch's cancel, items refused at admission); the ids that ended."""
        if not status.is_final:
            raise ValueError(f"{status} does not end a job")
        outcomes = await self.store.transition_many(job_ids, status, from_status=from_status, **fields)
        changed = [job_id for job_id, did in zip(job_ids, outcomes, strict=True) if did]
        if changed:
            for job in (await self.store.get_many(changed)).values():
                await self._after(job, status)
        return changed

    async def _after(self, job: Job, status: JobStatus) -> None:
        if job.source == "upload":
            await self.store.delete_upload(job.id)
        self.on_ended(job)
        await self.on_event(job, status)
