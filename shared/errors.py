"""Typed errors shared by the API and the workers: one class per stable ``code``.

Each class belongs to one family of :mod:`shared.error_families` (how a client handles it);
:mod:`shared.error_codes` finds a class by its code. Codes are part of the public API: never
rename one. The API maps every CaptionizerError to an RFC 9457 problem response in one place
(``api/http/problems.py``); the worker records ``code`` and ``message`` on the job.
"""

from __future__ import annotations

from shared.error_families import CapacityError, ConflictError, FetchError, InputError, ServiceFault


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


class ImageTooComplex(InputError):
    """Decoding the image would cost far more than its pixels need (a scan or chunk bomb, or past ``decode_cpu_budget_s``)."""

    code = "image_too_complex"
    status = 422
    title = "Image too costly to decode"


class ImageAspectRatio(InputError):
    """The image is far longer than wide, or the reverse (``max_image_aspect_ratio``)."""

    code = "image_aspect_ratio"
    status = 422
    title = "Image aspect ratio too extreme"


class PromptTooLong(InputError):
    """The prompt takes more tokens than the model's text positions leave room for."""

    code = "prompt_too_long"
    status = 422
    title = "Prompt too long for the model"


class IdempotencyConflict(InputError):
    """The Idempotency-Key was used before with a different request body."""

    code = "idempotency_conflict"
    status = 422
    title = "Idempotency key reused with a different request"


class BatchNotFound(InputError):
    """No batch with this id is visible to the caller."""

    code = "batch_not_found"
    status = 404
    title = "Batch not found"


class FileNotFound(InputError):
    """No file with this id is visible to the caller (the OpenAI-compatible Files API)."""

    code = "file_not_found"
    status = 404
    title = "File not found"


class JobNotFound(InputError):
    """No job with this id is visible to the caller."""

    code = "job_not_found"
    status = 404
    title = "Job not found"


class Unauthorized(InputError):
    """The API key is missing or not valid."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class ForbiddenOrigin(InputError):
    """The request did not come through the deployment's Azure Front Door (no matching X-Azure-FDID)."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class CrossSiteRequest(InputError):
    """A browser on another site sent this request to an API that serves callers without a key."""

    code = "cross_site_request"
    status = 403
    title = "Cross-site request refused"


class HostNotAllowed(InputError):
    """A request without an API key named a Host that this anonymous server does not serve (DNS rebinding guard)."""

    code = "host_not_allowed"
    status = 421
    title = "Host not served"


class FetchFailed(FetchError):
    """The image could not be downloaded (network error or non-2xx status)."""

    code = "fetch_failed"
    status = 502
    title = "Image fetch failed"


class FetchTimeout(FetchError):
    """The image server did not answer in time."""

    code = "fetch_timeout"
    status = 504
    title = "Image fetch timed out"


class QueueUnavailable(CapacityError):
    """Redis (the queue and job store) cannot be reached, or is out of memory."""

    code = "queue_unavailable"
    status = 503
    title = "Queue unavailable"


class QueueFull(CapacityError):
    """The queue holds as many jobs as it may; retry later."""

    code = "queue_full"
    status = 503
    title = "Queue full"
    # Roughly how long a worker takes to drain a batch or two.
    default_retry_after_s = 10


class OwnerQuotaExceeded(CapacityError):
    """This API key already holds its share of the queue or of pending upload bytes; others are still served."""

    code = "owner_quota_exceeded"
    status = 429
    title = "Share of the queue used up"
    default_retry_after_s = 10


class RateLimited(CapacityError):
    """The key made too many requests; retry after ``retry_after_s``."""

    code = "rate_limited"
    status = 429
    title = "Too many requests"


class TooManyItemsInFlight(CapacityError):
    """The key already has ``max_items_in_flight`` batch items queued or running; retry after ``retry_after_s``."""

    code = "too_many_items_in_flight"
    status = 429
    title = "Too many batch items in flight"


class ModelNotReady(CapacityError):
    """No worker has its model loaded yet."""

    code = "model_not_ready"
    status = 503
    title = "Model not ready"


class WaitTimedOut(CapacityError):
    """A blocking request (``GET /caption``) stopped waiting; the job goes on and can be polled."""

    code = "wait_timeout"
    status = 504
    title = "Job still running"
    # The answer carries job_url: poll that instead of sending the request again.
    default_retry_after_s = None


class JobNotCancelable(ConflictError):
    """The job has already finished, so it cannot be canceled."""

    code = "job_not_cancelable"
    status = 409
    title = "Job not cancelable"


class BatchClosed(ConflictError):
    """Items can no longer be added: the batch was submitted without ``more_items`` or was canceled."""

    code = "batch_closed"
    status = 409
    title = "Batch closed"


class JobEnded(ConflictError):
    """The job ended without a caption or an error (canceled or expired), so there is nothing to answer."""

    code = "job_error"
    status = 409
    title = "Job error"


class InternalError(ServiceFault):
    """An unexpected failure; details are in the logs under the job id."""

    code = "internal_error"
    status = 500
    title = "Internal error"


class WorkerCrashed(ServiceFault):
    """The job's worker process died too many times while processing it."""

    code = "worker_crashed"
    status = 500
    title = "Worker crashed"


class JobTimedOut(ServiceFault):
    """The job ran past its time limit."""

    code = "job_timeout"
    status = 504
    title = "Job timed out"
