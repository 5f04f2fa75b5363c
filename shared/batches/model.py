"""The batch contract: many items sharing options, their ids, and how a batch and its results show themselves.

``BatchCreate`` is what a client sends to ``POST /v1/batches``, ``Batch`` what Redis
stores (a hash, ``shared.batches.store``) and ``BatchPublic`` what the API answers.
Every item is also a job: its id is derived from the batch id and its index, so a
batch never stores a list of ids, and an item's batch is known from its id alone.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.jobs.model import MAX_NEW_TOKENS, JobErrorInfo, JobStatus, JobUsage

#: The most items one request may carry, whatever ``max_batch_items`` says (the schema's maxItems).
MAX_BATCH_ITEMS = 10_000
#: Longest client reference of one item.
MAX_REF_CHARS = 256
#: Longest inline image as base64 text; ``max_upload_bytes`` and ``max_request_bytes`` bound it further.
MAX_BASE64_CHARS = 16 * 1024 * 1024
#: Longest prompt the schema lets through; ``max_prompt_chars`` bounds it further.
MAX_PROMPT_CHARS = 4_096

# new_batch_id(): "bat_" and 22 URL-safe characters (128 random bits).
_BATCH_ID = re.compile(r"bat_[A-Za-z0-9_-]{22}")
# An item's job id: "job_", its batch's 22 characters, "_" and its index. Single jobs'
# ids are exactly 26 characters, so the two never collide.
_ITEM_JOB_ID = re.compile(r"job_([A-Za-z0-9_-]{22})_(0|[1-9][0-9]{0,8})")


def new_batch_id() -> str:
    """A random, unguessable batch id (128 bits, URL-safe)."""
    return "bat_" + secrets.token_urlsafe(16)


def is_batch_id(text: str) -> bool:
    """True when ``text`` has the form of our batch ids (anything else is not worth a Redis lookup)."""
    return _BATCH_ID.fullmatch(text) is not None


def item_job_id(batch_id: str, index: int) -> str:
    """The job id of the batch's item number ``index``; as unguessable as the batch id."""
    return f"job_{batch_id[4:]}_{index}"


def parse_item_job_id(job_id: str) -> tuple[str, int] | None:
    """``(batch_id, index)`` of an item's job id, or None for a single job's id."""
    match = _ITEM_JOB_ID.fullmatch(job_id)
    if match is None:
        return None
    return "bat_" + match.group(1), int(match.group(2))


class BatchState(StrEnum):
    """Where a batch is in its life, derived from its counts."""

    #: Submitted with ``more_items``: more items may still be appended.
    OPEN = "open"
    #: Some items have not ended yet.
    RUNNING = "running"
    #: Every item has ended (succeeded, failed or expired).
    COMPLETED = "completed"
    #: Canceled by its owner; every item it held has ended.
    CANCELED = "canceled"


class BatchItemCreate(BaseModel):
    """One item: an image URL or a base64 image, and the client's own reference for it."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, max_length=2048, description="http(s) URL of the image; the worker fetches it.")
    image_base64: str | None = Field(
        None, max_length=MAX_BASE64_CHARS, description="The image itself, base64-encoded (at most max_upload_bytes)."
    )
    ref: str | None = Field(
        None, max_length=MAX_REF_CHARS, description="Your reference for this item (a file name, a product id), echoed."
    )
    cache: bool | None = Field(
        None, description="Use the caption cache for this item; unset: the batch's own cache setting."
    )

    @model_validator(mode="after")
    def _one_image(self) -> BatchItemCreate:
        # The shape of the request, so it refuses the request whole (an item's content fails that item alone).
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one image per item: image_url or image_base64")
        return self


class BatchItems(BaseModel):
    """Items to add to a batch, and whether more will follow (``POST /v1/batches/{id}/items``).

    No items and no ``more_items`` only closes the batch: how a client whose upload stopped part way
    (Ctrl-C, an error) lets what it did send end, instead of leaving the batch open until it expires.
    """

    model_config = ConfigDict(extra="forbid")

    items: list[BatchItemCreate] = Field(
        max_length=MAX_BATCH_ITEMS,
        description="The images, at most max_batch_items per request; none, without more_items, closes the batch.",
    )
    more_items: bool = Field(
        False,
        description="Keep the batch open for more items (appended with POST /v1/batches/{id}/items); the batch "
        "ends only after a request without it.",
    )
    cache: bool | None = Field(
        None,
        description="Use the caption cache for these items (an item's own cache wins); unset: the batch's setting, "
        "given when it was created (true unless it said false).",
    )

    @model_validator(mode="after")
    def _empty_only_closes(self) -> BatchItems:
        if not self.items and self.more_items:
            raise ValueError("items is empty: an empty request can only close the batch (more_items false)")
        return self


class BatchCreate(BatchItems):
    """Body of ``POST /v1/batches``: items, options they all share, and an optional webhook."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "items": [
                        {"image_url": "https://example.com/a.jpg", "ref": "a.jpg"},
                        {"image_url": "https://example.com/b.jpg", "ref": "b.jpg"},
                    ],
                    "max_new_tokens": 20,
                    "webhook_url": "https://example.com/hooks/batches",
                }
            ]
        },
    )

    items: list[BatchItemCreate] = Field(
        min_length=1, max_length=MAX_BATCH_ITEMS, description="The images, at most max_batch_items per request."
    )
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="Text GIT continues, for every item.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Longest caption, in tokens, for every item."
    )
    webhook_url: str | None = Field(
        None, max_length=2048, description="URL that receives a signed POST (batch.completed or batch.canceled)."
    )
    webhook_item_events: bool = Field(
        False, description="Also deliver each item's final event (job.succeeded...) to webhook_url."
    )
    cache: bool | None = Field(
        None,
        description="Use the caption cache for every item (an item's own cache wins): false captions each image "
        "afresh (docs/cache.md); unset: true. Items appended later inherit it.",
    )


class Batch(BaseModel):
    """A batch as stored (``shared.batches.store`` keeps it in a Redis hash)."""

    id: str
    owner: str
    total: int
    is_open: bool = False
    counts: dict[JobStatus, int] = Field(default_factory=dict)
    done: int = 0
    prompt: str | None = None
    max_new_tokens: int = 30
    webhook_url: str | None = None
    webhook_item_events: bool = False
    #: Whether the batch's items use the caption cache unless an item says otherwise.
    cache: bool = True
    #: Items that ended with a cache hit (counted by the transition script, shared.batch_counts).
    cache_hits: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    canceled_at: datetime | None = None
    expires_at: datetime
    #: Every results chunk compacted (the batch ended and was closed).
    is_compacted: bool = False
    #: Results chunks compacted while the batch ran (``shared.batches.item_results``).
    compacted_chunks: frozenset[int] = frozenset()

    def is_chunk_compacted(self, chunk: int) -> bool:
        """True when results chunk ``chunk`` lives in the finished-results store, not on job records."""
        return self.is_compacted or chunk in self.compacted_chunks

    @property
    def state(self) -> BatchState:
        """The batch's state, from its counts and flags."""
        if self.finished_at is not None:
            return BatchState.CANCELED if self.canceled_at is not None else BatchState.COMPLETED
        return BatchState.OPEN if self.is_open else BatchState.RUNNING


class BatchPublic(BaseModel):
    """A batch as the API shows it to its owner."""

    id: str = Field(examples=["bat_Vq3kZ0m1cS8m2b7rX4yN2A"])
    url: str = Field(description="Where to poll this batch.")
    results_url: str = Field(description="Where to read its items' results (cursor pages or NDJSON).")
    status: BatchState
    total: int = Field(description="Items in the batch so far.")
    counts: dict[JobStatus, int] = Field(description="Items per job status.")
    done: int = Field(description="Items that have ended, in any final status.")
    progress: float = Field(ge=0, le=1, description="done / total.")
    cache_hits: int = Field(0, description="Items whose result came from the caption cache (no decode, no model).")
    prompt: str | None
    max_new_tokens: int
    webhook_url: str | None
    webhook_item_events: bool
    cache: bool = Field(True, description="Whether the items use the caption cache unless an item says otherwise.")
    created_at: datetime
    started_at: datetime | None = Field(description="When a worker started the first item.")
    finished_at: datetime | None = Field(description="When the last item ended.")
    canceled_at: datetime | None
    expires_at: datetime = Field(description="When the batch and its results are deleted.")

    @classmethod
    def from_batch(cls, batch: Batch) -> BatchPublic:
        """The public view of a stored batch (drops the owner)."""
        counts = {status: batch.counts.get(status, 0) for status in JobStatus}
        return cls(
            url=f"/v1/batches/{batch.id}",
            results_url=f"/v1/batches/{batch.id}/results",
            status=batch.state,
            progress=batch.done / batch.total if batch.total else 0.0,
            counts=counts,
            **batch.model_dump(include=_PUBLIC_FIELDS),
        )


_PUBLIC_FIELDS = {
    "id",
    "total",
    "done",
    "prompt",
    "max_new_tokens",
    "webhook_url",
    "webhook_item_events",
    "cache",
    "cache_hits",
    "created_at",
    "started_at",
    "finished_at",
    "canceled_at",
    "expires_at",
}


class BatchItemResult(BaseModel):
    """One item's outcome: its job, the client's ref, and its caption or error."""

    index: int = Field(description="Position of the item in the batch, from 0.")
    id: str = Field(description="The item's job id (also readable at /v1/jobs/{id}).")
    ref: str | None
    status: JobStatus
    caption: str | None
    error: JobErrorInfo | None
    usage: JobUsage | None = Field(None, description="Tokens of prompt and caption, for an item that succeeded.")

    @classmethod
    def of_item(
        cls, batch_id: str, index: int, status: str, caption: str | None, ref: str | None, error: Any, usage: Any
    ) -> BatchItemResult:
        """Item ``index``'s result from its stored fields (a live job record's or a compacted row's, JSON-decoded)."""
        return cls(
            index=index,
            id=item_job_id(batch_id, index),
            ref=ref,
            status=JobStatus(status),
            caption=caption,
            error=JobErrorInfo.model_validate(error) if error else None,
            usage=JobUsage.model_validate(usage) if usage else None,
        )


class BatchResultsPage(BaseModel):
    """A page of results; pass ``next_cursor`` as ``?cursor=`` for the next one (null at the end)."""

    items: list[BatchItemResult]
    next_cursor: str | None


#: Batch webhook events, delivered when the batch ends.
BatchEvent = Literal["batch.completed", "batch.canceled"]
