"""``make_celery(settings)``: the worker's Celery app, with the caption and webhook tasks registered."""

from __future__ import annotations

from celery import Celery

from shared.broker.config import celery_config
from shared.settings import Settings
from worker.broker.clients import ReuseBrokerClients
from worker.limits import apply_worker_limits
from worker.tasks import register_caption_task
from worker.webhooks.tasks import install_retry_mover, register_webhook_task


def make_celery(settings: Settings) -> Celery:
    """The worker app: shared config, the caption task (model loaded at start), webhook delivery."""
    app = Celery("captionizer")
    app.conf.update(celery_config(settings))
    # Reserve no more messages than the pool has threads (Celery "Prefetch limits"): the rest stay
    # in Redis for other workers. -c, when given, sets the threads; else worker_threads.
    app.conf.worker_prefetch_multiplier = 1
    app.conf.worker_concurrency = settings.worker_threads
    # BRPOP names the consumed queues in -Q order on every fetch, instead of kombu's default
    # round robin: a free pool thread takes an interactive job before the next batch chunk.
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "queue_order_strategy": "priority",
    }
    # kombu builds a redis-py client per acknowledgement otherwise (worker.broker.clients).
    app.steps["consumer"].add(ReuseBrokerClients)
    apply_worker_limits(app, settings)
    register_caption_task(app, settings)
    register_webhook_task(app, settings)
    install_retry_mover(app, settings)
    return app
