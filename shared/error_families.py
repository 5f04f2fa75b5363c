"""The families of Captionizer's errors: one per way a client handles an error.

The concrete classes, one per code, are in :mod:`shared.errors`.

The tree, one family per way a client handles the error::

    CaptionizerError
    ├── InputError (4xx): fix the request before sending it again
    │   ├── InvalidRequest, UrlNotAllowed, UploadTooLarge, UnsupportedMediaType, UploadExpired, NotAnImage,
    │   ├── ImageTooLarge, ImageCorrupt, TooManyPixels, ImageAspectRatio, PromptTooLong,
    │   ├── IdempotencyConflict (422), JobNotFound, BatchNotFound,
    │   └── Unauthorized, ForbiddenOrigin, CrossSiteRequest
    ├── FetchError (502/504): the image's own server failed; fix or retry that server
    │   └── FetchFailed, FetchTimeout
    ├── CapacityError (429/503/504): the same request may succeed later; wait ``Retry-After``
    │   └── QueueUnavailable, QueueFull, OwnerQuotaExceeded, RateLimited, TooManyItemsInFlight,
    │       ModelNotReady, WaitTimedOut
    ├── ConflictError (409): the job's current state forbids this; read the job again
    │   └── JobNotCancelable, JobEnded, BatchClosed
    └── ServiceFault (500/504): our failure; it is logged under the job id
        └── InternalError, WorkerCrashed, JobTimedOut

Families have no code and are never raised; each code belongs to exactly one class.
Codes are part of the public API: never rename one. The API maps every
CaptionizerError to an RFC 9457 problem response in one place
(``api/http/problems.py``); the worker records ``code`` and ``message`` on the job.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CaptionizerError(Exception):
    """Base of every error Captionizer raises on purpose."""

    code: ClassVar[str]
    status: ClassVar[int]
    title: ClassVar[str]

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        if not is_concrete(type(self)):
            raise TypeError(f"{type(self).__name__} is a family of errors; raise one of its classes")
        self.message = message or self.title
        #: Extra members for the problem body (e.g. ``upstream_status``).
        self.extra = extra
        super().__init__(self.message)


class InputError(CaptionizerError):
    """The request, or the image it names, cannot be served as sent: the caller must change it."""


class FetchError(CaptionizerError):
    """The image's server failed to deliver it (an upstream failure, not ours and not the request's)."""


class CapacityError(CaptionizerError):
    """The service cannot take this request now; the same request may succeed after ``retry_after_s``."""

    #: Retry-After (seconds) when the raiser names none; None sends no Retry-After.
    default_retry_after_s: ClassVar[int | None] = 5

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        if self.default_retry_after_s is not None:
            extra.setdefault("retry_after_s", self.default_retry_after_s)
        super().__init__(message, **extra)


class ConflictError(CaptionizerError):
    """The job's current state does not allow what was asked (409)."""


class ServiceFault(CaptionizerError):
    """Something failed on our side; the details are in the logs."""


#: The families, one per way of handling an error; every concrete class is in exactly one.
FAMILIES: tuple[type[CaptionizerError], ...] = (InputError, FetchError, CapacityError, ConflictError, ServiceFault)


def is_concrete(cls: type[CaptionizerError]) -> bool:
    """True for a class with its own code (raised), False for a family (only caught)."""
    return hasattr(cls, "code")
