"""The job contract: states, legal transitions and the schemas on the wire and in Redis.

``JobCreate`` is what a client sends, ``Job`` what Redis stores and ``JobPublic``
what the API answers. Only :meth:`shared.jobs.store.JobStore.transition` writes ``status``.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class JobStatus(StrEnum):
    """Where a job is in its life."""

    #: Accepted and waiting in the queue.
    QUEUED = "queued"
    #: A worker has taken it (fetching, decoding or captioning).
    RUNNING = "running"
    #: Captioned; ``caption`` holds the result.
    SUCCEEDED = "succeeded"
    #: Ended with ``error`` set; the job will not run again.
    FAILED = "failed"
    #: Canceled by its owner; any result is discarded.
    CANCELED = "canceled"
    #: Its ``deadline_at`` passed before a worker started it.
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True for the states a job never leaves."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})

#: Every legal status change. ``running -> running`` is a redelivery after a worker
#: died mid-job (acks_late); final states have no way out, so a late duplicate can
#: never overwrite a finished result. ``queued -> succeeded`` (or ``failed``) is a cache
#: hit found before the job ran: a fresh URL's repeat, answered without a download.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}
    ),
    JobStatus.RUNNING: frozenset({JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}

#: How the caption cache served a job: ``hit`` (an earlier job's result, no decode nor model), ``miss``
#: (captioned here, and cached), ``off`` (the job or the deployment turned the cache off).
CacheOutcome = Literal["hit", "miss", "off"]

#: Events a webhook may subscribe to; final states are always delivered.
WebhookEvent = Literal["running", "succeeded", "failed", "canceled", "expired"]

# Ceilings of what a request may carry, so every field is bounded in the schema itself;
# the configured limits (max_prompt_chars, max_new_tokens_limit, max_upload_bytes) are
# checked below them by the API, and a body is never larger than max_request_bytes.
#: Longest image or webhook URL, in characters (browsers' and CDNs' practical limit).
MAX_URL_CHARS = 2048
#: Longest prompt the schema admits, in characters (``max_prompt_chars`` is the configured limit).
MAX_PROMPT_CHARS = 4096
#: Largest max_new_tokens the schema admits (``max_new_tokens_limit`` is the configured limit).
MAX_NEW_TOKENS = 1024
#: Longest base64 image the schema admits, in characters: 64 MiB of base64 is 48 MiB of image.
MAX_IMAGE_BASE64_CHARS = 64 * 1024 * 1024
#: Longest deadline a job may ask for, in seconds.
MAX_DEADLINE_S = 86_400
#: One of each webhook event at most (the list is a set).
MAX_WEBHOOK_EVENTS = 5


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses from which ``target`` may be reached."""
    return frozenset(src for src, targets in ALLOWED_TRANSITIONS.items() if target in targets)


def new_job_id() -> str:
    """A random, unguessable job id (128 bits, URL-safe)."""
    return "job_" + secrets.token_urlsafe(16)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class JobErrorInfo(BaseModel):
    """Why a job failed: a stable ``code`` and a human ``message``."""

    code: str = Field(examples=["fetch_failed"])
    message: str = Field(examples=["The image server answered 404"])
    upstream_status: int | None = Field(None, description="HTTP status of the image server, for fetch_failed.")


class JobTimings(BaseModel):
    """Where a job's time went, in seconds."""

    queue_wait_s: float | None = Field(None, description="From creation until a worker started the job.")
    fetch_s: float | None = Field(None, description="Downloading (or reading the upload) and decoding the image.")
    batch_wait_s: float | None = Field(
        None, description="From the image being ready until its model batch's generate began."
    )
    generate_s: float | None = Field(None, description="The model batch's generate call, shared by every job in it.")
    total_s: float | None = Field(None, description="From creation until the job ended.")
    batch_size: int | None = Field(
        None, description="Jobs captioned together in the same generate call (a model batch)."
    )
    batch_id: str | None = Field(
        None,
        description="The model batch (one generate call) this job was captioned in; a client's batch is the job's "
        "own batch_id.",
    )


class JobUsage(BaseModel):
    """Tokens a caption took, counted by the worker with the model's own tokenizer (the API has none)."""

    prompt_tokens: int = Field(
        ge=0, description="Tokens of the prompt's text (0 without one); image patches are not counted."
    )
    completion_tokens: int = Field(ge=0, description="Tokens of the caption.")


class WebhookState(BaseModel):
    """Delivery record of a job's webhook: its latest event and that event's latest attempt."""

    status: Literal["pending", "delivering", "retrying", "delivered", "failed", "gone"] = "pending"
    event: str | None = Field(None, description="Event type this record is about, e.g. job.succeeded.")
    webhook_id: str | None = Field(None, description="The webhook-id header of that event, the same on every retry.")
    attempts: int = 0
    last_status_code: int | None = None
    last_error: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


class JobOptions(BaseModel):
    """Generation options; jobs with equal options can share a batch."""

    model_config = ConfigDict(frozen=True)

    prompt: str | None = None
    max_new_tokens: int = 30


class Job(BaseModel):
    """A job as stored in Redis (one hash, each field JSON-encoded)."""

    id: str
    owner: str = "anonymous"
    status: JobStatus = JobStatus.QUEUED
    source: Literal["url", "upload"] = "url"
    image_url: str | None = None
    prompt: str | None = None
    max_new_tokens: int = 30
    webhook_url: str | None = None
    webhook_events: list[WebhookEvent] = Field(default_factory=list)
    deadline_at: datetime | None = None
    created_at: datetime = Field(default_factory=utc_now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    caption: str | None = None
    usage: JobUsage | None = None
    error: JobErrorInfo | None = None
    model: str | None = None
    attempts: int = 0
    stage: str | None = Field(None, description="What the worker is doing now: fetching, decoding or captioning.")
    timings: JobTimings = Field(default_factory=JobTimings)
    webhook: WebhookState | None = None
    batch_id: str | None = Field(None, description="The batch this job is an item of (shared.batches.model).")
    ref: str | None = Field(None, description="The client's reference of a batch item.")
    use_cache: bool = Field(True, description="False when the request opted out of the caption cache (cache=false).")
    cache: CacheOutcome | None = Field(None, description="How the caption cache served the job, once it ended.")
    cached_from: str | None = Field(None, description="On a cache hit, the job of the same key that produced it.")

    @property
    def options(self) -> JobOptions:
        """The options that decide which batch this job may join."""
        return JobOptions(prompt=self.prompt, max_new_tokens=self.max_new_tokens)


class JobCreate(BaseModel):
    """Body of ``POST /v1/jobs`` as JSON: an image URL or a base64 image, and options."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"image_url": "https://example.com/cat.jpg"},
                {
                    "image_url": "https://example.com/sign.png",
                    "prompt": "what does the sign say?",
                    "max_new_tokens": 20,
                },
                {"image_url": "https://example.com/cat.jpg", "webhook_url": "https://example.com/hooks/captions"},
            ]
        },
    )

    image_url: str | None = Field(
        None, max_length=MAX_URL_CHARS, description="http(s) URL of the image; the worker fetches it."
    )
    image_base64: str | None = Field(
        None,
        max_length=MAX_IMAGE_BASE64_CHARS,
        description="The image itself, base64-encoded, instead of image_url (at most max_upload_bytes decoded).",
    )
    prompt: str | None = Field(
        None,
        max_length=MAX_PROMPT_CHARS,
        description="Text GIT continues; with a VQA checkpoint, a question about the image (at most max_prompt_chars).",
    )
    max_new_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Longest caption, in tokens (at most max_new_tokens_limit)."
    )
    webhook_url: str | None = Field(
        None, max_length=MAX_URL_CHARS, description="URL that receives a signed POST when the job ends."
    )
    webhook_events: list[WebhookEvent] = Field(
        default_factory=list,
        max_length=MAX_WEBHOOK_EVENTS,
        description="Extra events to deliver besides the final one, e.g. ['running']; repeats count once.",
    )
    deadline_s: float | None = Field(
        None, gt=0, le=MAX_DEADLINE_S, description="Expire the job if no worker starts it within this many seconds."
    )
    cache: bool = Field(
        True,
        description="Use the caption cache: false captions the image afresh even if this key captioned the same "
        "bytes with the same options before (docs/cache.md).",
    )

    @field_validator("webhook_events")
    @classmethod
    def _each_event_once(cls, events: list[WebhookEvent]) -> list[WebhookEvent]:
        # A set on the wire: a repeat would only be stored, and delivered, twice.
        return list(dict.fromkeys(events))


class JobPublic(BaseModel):
    """A job as the API shows it to its owner."""

    id: str = Field(examples=["job_Vq3kZ0m1cS8m2b7rX4yN2A"])
    url: str = Field(description="Where to poll this job.", examples=["/v1/jobs/job_Vq3kZ0m1cS8m2b7rX4yN2A"])
    status: JobStatus
    source: Literal["url", "upload"]
    image_url: str | None
    prompt: str | None
    max_new_tokens: int
    caption: str | None = Field(examples=["a large red circle on a white background"])
    usage: JobUsage | None = Field(None, description="Tokens of prompt and caption, once the job succeeded.")
    error: JobErrorInfo | None
    model: str | None
    stage: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    deadline_at: datetime | None
    timings: JobTimings
    webhook_url: str | None
    webhook_events: list[WebhookEvent]
    webhook: WebhookState | None
    batch_id: str | None = Field(None, description="The batch this job is an item of, if any.")
    ref: str | None = Field(None, description="The client's reference of a batch item.")
    cache: CacheOutcome | None = Field(
        None, description="hit: an earlier result was reused (no decode, no model); miss: captioned; off: cache unused."
    )
    cached_from: str | None = Field(
        None, description="On a hit, the id of your job that produced the result (never another key's job)."
    )

    @classmethod
    def from_job(cls, job: Job) -> JobPublic:
        """The public view of a stored job (drops the owner)."""
        data: dict[str, Any] = job.model_dump(exclude={"owner"})
        return cls(url=f"/v1/jobs/{job.id}", **data)
