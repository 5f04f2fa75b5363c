"""``make_celery(settings)``: the worker's Celery app, with the caption and webhook tasks registered."""

from __future__ import annotations

from celery import Celery

from shared.celery_config import celery_config
from shared.settings import Settings
from worker.limits import apply_worker_limits
from worker.tasks import register_caption_task
from worker.webhooks import install_retry_mover, register_webhook_task


def make_celery(settings: Settings) -> Celery:
    """The worker app: shared config, the caption task (model loaded at start), webhook delivery."""
    app = Celery("captionizer")
    app.conf.update(celery_config(settings))
    # Reserve no more messages than the pool has threads: in-flight jobs stay bounded at two
    # batches, and the rest stay in Redis for other workers (Celery "Prefetch limits").
    app.conf.worker_prefetch_multiplier = 1
    apply_worker_limits(app, settings)
    register_caption_task(app, settings)
    register_webhook_task(app, settings)
    install_retry_mover(app, settings)
    return app
