"""``GET /v1/jobs``: one owner's jobs, newest first, a page at a time, optionally of one status.

The store keeps each owner's job ids in a sorted set by creation time (written when a job is
created). A page is read from that index; the cursor is the (time, id) of the last job shown,
opaque to clients, so pages stay stable while new jobs arrive at the top.
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, Field

from shared.errors import InvalidRequest
from shared.jobs.model import JobPublic, JobStatus
from shared.jobs.store import JobStore

#: Most jobs one page may hold (``?limit=``).
MAX_PAGE_SIZE = 100
#: Jobs per page when ``?limit=`` is not given.
DEFAULT_PAGE_SIZE = 20
#: Index entries one request reads at most while filtering by status; a page may then come back
#: short, with a cursor to go on from, rather than scan an owner's whole history in one request.
MAX_SCANNED = 1_000
_SCAN_CHUNK = 200


class JobPage(BaseModel):
    """One page of the caller's jobs, newest first."""

    items: list[JobPublic] = Field(description="The jobs, newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next (older) page; null when there is none.",
        examples=["MTc2NDQxMjAwMC4xMjM0NTZ8am9iX1ZxM2taMG0xY1M4bTJiN3JYNHlOMkE"],
    )


def encode_cursor(created_s: float, job_id: str) -> str:
    """The opaque cursor after the job created at ``created_s`` with id ``job_id``."""
    return base64.urlsafe_b64encode(f"{created_s!r}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (created_s, job_id) a cursor stands for.

    Raises:
        InvalidRequest: the cursor was not made by :func:`encode_cursor`.
    """
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = text.split("|", 1)
        created_s = float(created)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("cursor: not a cursor this API returned") from exc
    if not job_id.startswith("job_") or created_s != created_s:  # NaN is not a position
        raise InvalidRequest("cursor: not a cursor this API returned")
    return created_s, job_id


async def list_jobs(
    store: JobStore, owner: str, *, cursor: str | None, limit: int, status: JobStatus | None
) -> JobPage:
    """A page of ``owner``'s jobs older than ``cursor``; jobs of other owners never appear."""
    position = decode_cursor(cursor) if cursor else None
    items: list[JobPublic] = []
    scanned = 0
    while len(items) < limit and scanned < MAX_SCANNED:
        # Without a filter every live entry is a hit, so one read of the page's size (plus one) is enough.
        want = limit - len(items) + 1 if status is None else _SCAN_CHUNK
        entries = await store.owner_job_ids(owner, before=position, count=want)
        if not entries:
            return JobPage(items=items, next_cursor=None)
        jobs = await store.get_many(job_id for job_id, _ in entries)
        await store.forget_owner_jobs(owner, (job_id for job_id, _ in entries if job_id not in jobs))
        for job_id, created_s in entries:
            job = jobs.get(job_id)
            scanned += 1
            if job is not None and job.owner == owner and (status is None or job.status is status):
                if len(items) == limit:
                    return JobPage(items=items, next_cursor=encode_cursor(*position) if position else None)
                items.append(JobPublic.from_job(job))
            position = (created_s, job_id)
        if len(entries) < want:
            return JobPage(items=items, next_cursor=None)
    return JobPage(items=items, next_cursor=encode_cursor(*position) if position else None)
