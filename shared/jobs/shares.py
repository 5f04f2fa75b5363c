"""Each owner's (API key's) fair share of the queue and of upload bytes, and the error for going past it.

The counting itself happens atomically in :data:`shared.jobs.scripts.CREATE_LUA`; this module holds
the limits it is given and turns its refusal codes into our errors (the caption queue's own depth,
checked in the same script, included).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.error_families import CapacityError
from shared.errors import OwnerQuotaExceeded, QueueFull

#: Retry-After of a queue_full answer: roughly how long a worker takes to drain a batch or two.
QUEUE_FULL_RETRY_AFTER_S = 10


@dataclass(frozen=True)
class OwnerShares:
    """How much of the service one owner (API key) may hold at once; 0 is no limit."""

    #: Jobs of one owner waiting in ``queued``.
    max_queued_jobs: int = 0
    #: Uploaded image bytes of one owner waiting in Redis for their jobs to end.
    max_upload_bytes: int = 0
    #: Uploaded image bytes of every owner together.
    max_total_upload_bytes: int = 0


def queue_full(waiting: int) -> QueueFull:
    """The refusal of a job while ``waiting`` caption tasks, the most the service queues, wait."""
    return QueueFull(
        f"{waiting} jobs are waiting, the most this service queues; retry later",
        retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
    )


def share_refusal(reason: int, held: int, limits: OwnerShares) -> CapacityError:
    if reason == 4:
        return queue_full(held)
    if reason == 1:
        return OwnerQuotaExceeded(
            f"this key already has {held} jobs queued, its share of the queue ({limits.max_queued_jobs}); "
            "retry once some have started"
        )
    if reason == 2:
        return OwnerQuotaExceeded(
            f"this key's uploads waiting in the queue already take {held} bytes of its {limits.max_upload_bytes}; "
            "retry once some jobs have ended"
        )
    return QueueFull(f"uploads waiting in the queue already take {held} bytes, the most this service keeps")
