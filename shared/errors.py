"""Typed errors shared by the API and the workers, each with a stable code.

The tree::

    CaptionizerError
    ├── InputError (4xx): the request or its image is unusable
    │   ├── InvalidRequest, UrlNotAllowed, UploadTooLarge, UnsupportedMediaType, UploadExpired, NotAnImage
    │   ├── FetchTimeout, FetchFailed, ImageTooLarge, ImageCorrupt, TooManyPixels
    ├── JobError (4xx): the job named cannot be served that way
    │   ├── JobNotFound, JobNotCancelable, IdempotencyConflict, BatchNotFound, BatchClosed
    ├── AuthError (401/403/429): who is asking, from where, and how often
    │   ├── Unauthorized, ForbiddenOrigin, RateLimited, TooManyItemsInFlight
    └── ServiceError (5xx): the service cannot serve now
        ├── QueueUnavailable, QueueFull, ModelNotReady, WorkerCrashed, JobTimedOut, WaitTimedOut, InternalError

Codes are part of the public API: never rename one. The API maps every
CaptionizerError to an RFC 9457 problem response in one place
(``api/problems.py``); the worker records ``code`` and ``message`` on the job.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CaptionizerError(Exception):
    """Base of every error Captionizer raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        self.message = message or self.title
        #: Extra members for the problem body (e.g. ``upstream_status``).
        self.extra = extra
        super().__init__(self.message)


class InputError(CaptionizerError):
    """The request, or the image it names, cannot be captioned."""

    code = "invalid_input"
    status = 400
    title = "Invalid input"


class InvalidRequest(InputError):
    """The request body or parameters fail validation."""

    code = "invalid_request"
    status = 422
    title = "Invalid request"


class UrlNotAllowed(InputError):
    """The URL's scheme, host, address or port is not allowed (SSRF guard)."""

    code = "url_not_allowed"
    status = 400
    title = "URL not allowed"


class UploadTooLarge(InputError):
    """The request body or uploaded file is larger than allowed."""

    code = "upload_too_large"
    status = 413
    title = "Upload too large"


class UnsupportedMediaType(InputError):
    """The request body is neither JSON nor multipart form data."""

    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class UploadExpired(InputError):
    """The uploaded image expired from Redis before a worker read it (``upload_ttl_s``)."""

    code = "upload_expired"
    status = 410
    title = "Upload expired"


class NotAnImage(InputError):
    """The bytes are not an image format we decode."""

    code = "not_an_image"
    status = 415
    title = "Not an image"


class FetchTimeout(InputError):
    """The image server did not answer in time."""

    code = "fetch_timeout"
    status = 504
    title = "Image fetch timed out"


class FetchFailed(InputError):
    """The image could not be downloaded (network error or non-2xx status)."""

    code = "fetch_failed"
    status = 502
    title = "Image fetch failed"


class ImageTooLarge(InputError):
    """The image file is larger than the download limit."""

    code = "image_too_large"
    status = 413
    title = "Image too large"


class ImageCorrupt(InputError):
    """The image format is recognised but the data is truncated or corrupt."""

    code = "image_corrupt"
    status = 422
    title = "Image corrupt"


class TooManyPixels(InputError):
    """The image has more pixels than the decoder allows (decompression bomb guard)."""

    code = "too_many_pixels"
    status = 413
    title = "Too many pixels"


class JobError(CaptionizerError):
    """The job named cannot be served that way."""

    code = "job_error"
    status = 409
    title = "Job error"


class JobNotFound(JobError):
    """No job with this id is visible to the caller."""

    code = "job_not_found"
    status = 404
    title = "Job not found"


class JobNotCancelable(JobError):
    """The job has already finished, so it cannot be canceled."""

    code = "job_not_cancelable"
    status = 409
    title = "Job not cancelable"


class IdempotencyConflict(JobError):
    """The Idempotency-Key was used before with a different request body."""

    code = "idempotency_conflict"
    status = 422
    title = "Idempotency key reused with a different request"


class BatchNotFound(JobError):
    """No batch with this id is visible to the caller."""

    code = "batch_not_found"
    status = 404
    title = "Batch not found"


class BatchClosed(JobError):
    """Items can no longer be added: the batch was submitted without ``more_items`` or was canceled."""

    code = "batch_closed"
    status = 409
    title = "Batch closed"


class AuthError(CaptionizerError):
    """The caller is not allowed to make this request now."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class Unauthorized(AuthError):
    """The API key is missing or not valid."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class ForbiddenOrigin(AuthError):
    """The request did not come through the deployment's Azure Front Door (no matching X-Azure-FDID)."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class RateLimited(AuthError):
    """The key made too many requests; retry after ``retry_after_s``."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"


class TooManyItemsInFlight(AuthError):
    """The key already has ``max_items_in_flight`` batch items queued or running; retry after ``retry_after_s``."""

    code = "too_many_items_in_flight"
    status = 429
    title = "Too many batch items in flight"


class ServiceError(CaptionizerError):
    """The service cannot serve the request right now."""

    code = "service_unavailable"
    status = 503
    title = "Service unavailable"


class QueueUnavailable(ServiceError):
    """Redis (the queue and job store) cannot be reached."""

    code = "queue_unavailable"
    status = 503
    title = "Queue unavailable"


class QueueFull(ServiceError):
    """The queue holds as many jobs as it may; retry later."""

    code = "queue_full"
    status = 503
    title = "Queue full"


class ModelNotReady(ServiceError):
    """No worker has its model loaded yet."""

    code = "model_not_ready"
    status = 503
    title = "Model not ready"


class WorkerCrashed(ServiceError):
    """The job's worker process died too many times while processing it."""

    code = "worker_crashed"
    status = 500
    title = "Worker crashed"


class JobTimedOut(ServiceError):
    """The job ran past its time limit."""

    code = "job_timeout"
    status = 504
    title = "Job timed out"


class WaitTimedOut(ServiceError):
    """A blocking request (``GET /caption``) stopped waiting; the job goes on and can be polled."""

    code = "wait_timeout"
    status = 504
    title = "Job still running"


class InternalError(ServiceError):
    """An unexpected failure; details are in the logs under the job id."""

    code = "internal_error"
    status = 500
    title = "Internal error"


def all_error_classes() -> list[type[CaptionizerError]]:
    """Every concrete error class, for documentation and code-uniqueness tests."""
    seen: list[type[CaptionizerError]] = []
    pending: list[type[CaptionizerError]] = [CaptionizerError]
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
    return seen
