"""The Celery workers: captioning with the model resident (batched), and webhook delivery."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    celery_app: Celery

__all__ = ["celery_app"]


def __getattr__(name: str) -> Any:
    # Built on first use, not at import: importing worker.intake.images must not read the environment.
    # Celery's `-A worker` looks for an attribute named `app`, so that name resolves here too.
    if name in ("celery_app", "app"):
        from worker.main import celery_app

        return celery_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
