"""The caption task, and the worker-process lifecycle that keeps the model resident for it.

A caption worker runs Celery's threads pool: each pool thread holds one job (one
message, acknowledged late) and waits while the process's :class:`CaptionRuntime`
fetches its image and captions it in a batch with the others. Twice the batch size
in threads lets one batch gather and fetch while the previous one generates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signals
from celery.exceptions import Reject
from prometheus_client import start_http_server

from shared.errors import QueueUnavailable
from shared.keys import CAPTION_TASK, Keys
from shared.settings import Settings
from worker import metrics
from worker.recovery import NotAdmittedError
from worker.runtime import CaptionModel, CaptionRuntime, load_captioner

logger = logging.getLogger(__name__)

#: Pool threads per batch: one batch generating, one gathering (fetch overlaps generate).
THREADS_PER_BATCH = 2


class CaptionService:
    """Starts the runtime when a worker that consumes the caption queue starts, and runs its tasks."""

    def __init__(
        self, app: Celery, settings: Settings, load_model: Callable[[Settings], CaptionModel] = load_captioner
    ) -> None:
        self.app = app
        self.settings = settings
        self.load_model = load_model
        self.runtime: CaptionRuntime | None = None

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """Load the model and size the pool, before the worker consumes anything (Celery ``worker_init``)."""
        if Keys(self.settings.key_prefix).caption_queue() not in self.app.amqp.queues.consume_from:
            return  # e.g. the webhook worker: it must never load the model
        began = time.perf_counter()
        captioner = self.load_model(self.settings)
        load_s = round(time.perf_counter() - began, 3)
        metrics.MODEL_LOAD_SECONDS.set(load_s)
        logger.info("model loaded", extra={"model": captioner.name, "duration_s": load_s})
        runtime = CaptionRuntime(self.settings, self.app.send_task, captioner)
        runtime.model_load_s = load_s
        if sender is not None:
            _use_thread_pool(sender, THREADS_PER_BATCH * runtime.batch_size)
        runtime.start()
        self.runtime = runtime
        if self.settings.worker_metrics_port:
            _serve_metrics(self.settings.worker_metrics_port)

    def on_worker_shutdown(self, **_: Any) -> None:
        """Stop the runtime after the pool has finished its running jobs (Celery ``worker_shutdown``)."""
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None

    def run(self, job_id: str) -> None:
        """Body of the caption task."""
        if self.runtime is None:
            # Only a worker that consumes the caption queue runs caption tasks; give it back.
            raise Reject("this worker has no model loaded", requeue=True)
        try:
            self.runtime.run_job(job_id)
        except QueueUnavailable as exc:
            # Redis went away mid-job: put the message back rather than ack a job never recorded.
            logger.error("job store unavailable; requeueing", extra={"job_id": job_id})
            raise Reject(str(exc), requeue=True) from exc
        except NotAdmittedError as exc:
            # Redelivered jobs took this worker's turns for a whole time limit: let another worker try.
            logger.warning("no turn to run the job; requeueing", extra={"job_id": job_id})
            raise Reject(str(exc), requeue=True) from exc


def _use_thread_pool(worker: Any, concurrency: int) -> None:
    # The model lives in this process, with an event loop thread that forked children would not
    # have: the threads pool is part of the design, so it overrides -P and -c (Celery reads both
    # after worker_init, when it builds the pool).
    requested = (worker.pool_cls, worker.concurrency)
    worker.pool_cls = "threads"
    worker.concurrency = concurrency
    logger.info(
        "caption worker pool", extra={"pool": "threads", "concurrency": concurrency, "requested": str(requested)}
    )


def _serve_metrics(port: int) -> None:
    try:
        start_http_server(port)
    except OSError as exc:
        # A second worker on the same host: its metrics are lost, its captions are not.
        logger.warning("metrics port unavailable", extra={"port": port, "error": str(exc)})


def register_caption_task(app: Celery, settings: Settings, service: CaptionService | None = None) -> CaptionService:
    """Register ``shared.keys.CAPTION_TASK`` on ``app`` and the signals that load the model for it."""
    service = service or CaptionService(app, settings)

    # acks_late and reject_on_worker_lost come from shared.celery_config: a job's message is
    # acknowledged only after its result is recorded.
    @app.task(name=CAPTION_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def caption(job_id: str) -> None:
        service.run(job_id)

    # weak=False: the handlers are bound methods that nothing else keeps alive.
    signals.worker_init.connect(service.on_worker_init, weak=False)
    signals.worker_shutdown.connect(service.on_worker_shutdown, weak=False)
    return service
