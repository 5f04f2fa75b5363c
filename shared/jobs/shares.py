"""Each owner's (API key's) fair share of the queue and of upload bytes, and the error for going past it.

The counting itself happens atomically in ``shared/jobs/create.lua``; this module holds the limits
it is given and turns its refusal codes into our errors (the caption queue's own depth and a key's
batch items in flight, checked in the same script, included).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.error_families import CapacityError
from shared.errors import OwnerQuotaExceeded, QueueFull, TooManyItemsInFlight

#: Retry-After of a queue_full answer: roughly how long a worker takes to drain a batch or two.
QUEUE_FULL_RETRY_AFTER_S = 10
#: Retry-After of too_many_items_in_flight: long enough for a worker to finish a few task messages of items.
IN_FLIGHT_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class OwnerShares:
    """How much of the service one owner (API key) may hold at once; 0 is no limit."""

    #: Jobs of one owner waiting in ``queued``.
    max_queued_jobs: int = 0
    #: Uploaded image bytes of one owner waiting in Redis for their jobs to end.
    max_upload_bytes: int = 0
    #: Uploaded image bytes of every owner together.
    max_total_upload_bytes: int = 0
    #: Batch items of one owner queued or running (single jobs count on ``max_queued_jobs`` instead).
    max_items_in_flight: int = 0


def queue_full(waiting: int) -> QueueFull:
    """The refusal of a job while ``waiting`` caption tasks, the most the service queues, wait."""
    return QueueFull(
        f"{waiting} jobs are waiting, the most this service queues; retry later",
        retry_after_s=QUEUE_FULL_RETRY_AFTER_S,
    )


def share_refusal(reason: int, held: int, limits: OwnerShares) -> CapacityError:
    """Our error for create.lua's refusal ``reason`` (1-5), ``held`` being what the owner or everyone holds."""
    if reason == 5:
        return TooManyItemsInFlight(
            f"this key has {held} batch items queued or running, and would pass its {limits.max_items_in_flight}; "
            "retry when some have ended",
            retry_after_s=IN_FLIGHT_RETRY_AFTER_S,
        )
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
