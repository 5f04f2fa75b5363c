"""The caption and chunk tasks, and the worker-process lifecycle that keeps the model resident for them.

A caption worker runs Celery's threads pool (``-P threads``; any other pool is refused
at start, since the model and its event loop live in this one process): each pool
thread holds one message, acknowledged late (a single job, or a chunk of a batch), and
waits while the process's :class:`CaptionRuntime` runs it. ``-c`` (default
``worker_threads``) is how many messages a worker holds: well above the batch size, so
jobs waiting on slow image hosts leave threads for the others.

Interactive jobs come first twice over: the worker consumes the caption queue before the
bulk queue (``-Q captions,captions-bulk`` with kombu's ``queue_order_strategy="priority"``:
BRPOP names the queues in that order), and the batcher gives their images a batch's
first places (``worker.captioning.batching``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import click
from celery import Celery, signals
from celery.exceptions import Reject
from prometheus_client import start_http_server

from shared.errors import QueueUnavailable
from shared.keys import CAPTION_CHUNK_TASK, CAPTION_TASK, Keys
from shared.settings import Settings
from worker.broker.bulk_flow import BulkFlow, max_chunks_held
from worker.captioning import metrics
from worker.captioning.chunks import UNKNOWN_OWNER
from worker.recovery.redelivery import NotAdmittedError
from worker.runtime import CaptionModel, CaptionRuntime, load_captioner

logger = logging.getLogger(__name__)

#: The only Celery pool a caption worker runs (``celery.concurrency`` alias).
CAPTION_POOL = "threads"


class UnsupportedPoolError(SystemExit):
    """A caption worker was started with a pool other than threads (it would fork the model away).

    A SystemExit: Celery's signal dispatch logs and swallows the Exceptions its receivers raise, and
    this one must end the worker before it consumes anything.
    """


class CaptionService:
    """Starts the runtime when a worker that consumes the caption queue starts, and runs its tasks."""

    def __init__(
        self, app: Celery, settings: Settings, load_model: Callable[[Settings], CaptionModel] = load_captioner
    ) -> None:
        self.app = app
        self.settings = settings
        self.load_model = load_model
        self.runtime: CaptionRuntime | None = None
        self.bulk_flow: BulkFlow | None = None

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """Load the model before the worker consumes anything (Celery ``worker_init``).

        Raises:
            UnsupportedPoolError: the worker was asked for a pool other than threads.
        """
        keys = Keys(self.settings.key_prefix)
        consumed = self.app.amqp.queues.consume_from or {}
        if keys.caption_queue() not in consumed and keys.bulk_queue() not in consumed:
            return  # e.g. the webhook worker: it must never load the model
        if sender is not None:
            _require_thread_pool(sender)
        _consume_interactive_first(self.app, keys)
        captioner = self.load_model(self.settings)
        # Measured once, by the model: loading and warming up.
        metrics.MODEL_LOAD_SECONDS.set(captioner.load_time_s + captioner.warmup_time_s)
        runtime = CaptionRuntime(self.settings, self.app.send_task, captioner)
        runtime.start()
        self.runtime = runtime
        self._hold_few_chunks(runtime, getattr(sender, "concurrency", None) or self.settings.worker_threads)
        if self.settings.worker_metrics_port:
            _serve_metrics(self.settings.worker_metrics_port)

    def _hold_few_chunks(self, runtime: CaptionRuntime, pool_threads: int) -> None:
        """Keep pool threads free for single jobs under bulk load (worker.broker.bulk_flow)."""
        limit = max_chunks_held(items_in_hand=runtime.items_in_hand, batch_size=runtime.batch_size,
                                pool_threads=pool_threads)  # fmt: skip
        self.bulk_flow = BulkFlow(Keys(self.settings.key_prefix).bulk_queue(), max_chunks=limit)
        self.bulk_flow.connect()
        logger.info("bulk flow", extra={"max_chunks_held": limit, "pool_threads": pool_threads})
        if self.settings.bulk_chunks_per_key >= limit:
            # shared.broker.bulk_backlog: then one key whose chunks hang can fill this worker's hands.
            logger.warning(
                "bulk_chunks_per_key leaves no room for other keys' chunks in this worker",
                extra={"bulk_chunks_per_key": self.settings.bulk_chunks_per_key, "max_chunks_held": limit},
            )

    def on_worker_shutdown(self, **_: Any) -> None:
        """Stop the runtime after the pool has finished its running jobs (Celery ``worker_shutdown``)."""
        if self.bulk_flow is not None:
            self.bulk_flow.disconnect()
            self.bulk_flow = None
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None

    def run(self, job_id: str) -> None:
        """Body of the caption task: one interactive job."""
        with _requeue_when_unfinished(job_ids=[job_id]):
            self._runtime().run_job(job_id)

    def run_chunk(self, job_ids: list[str], owner: str | None = None, chunk_id: str | None = None) -> None:
        """Body of the chunk task: the jobs of one chunk of a batch, owned by ``owner`` (None: not named)."""
        valid_ids = isinstance(job_ids, list) and all(isinstance(job_id, str) for job_id in job_ids)
        if not valid_ids or not isinstance(owner, str | None):
            # Acknowledged and dropped: a message no redelivery can make valid.
            logger.error("malformed chunk message ignored", extra={"message_args": repr((job_ids, owner))[:200]})
            return
        with _requeue_when_unfinished(job_ids=job_ids):
            self._runtime().run_chunk(job_ids, owner or UNKNOWN_OWNER, chunk_id)

    def _runtime(self) -> CaptionRuntime:
        if self.runtime is None:
            # Only a worker that consumes the caption queues runs their tasks; give it back.
            raise Reject("this worker has no model loaded", requeue=True)
        return self.runtime


@contextlib.contextmanager
def _requeue_when_unfinished(job_ids: list[str]) -> Iterator[None]:
    """Put the message back (Reject, requeue) when its jobs could not all be recorded."""
    try:
        yield
    except QueueUnavailable as exc:
        # Redis went away mid-job: put the message back rather than ack jobs never recorded.
        logger.error("job store unavailable; requeueing", extra={"job_ids": job_ids[:10]})
        raise Reject(str(exc), requeue=True) from exc
    except NotAdmittedError as exc:
        # Redelivered jobs took this worker's turns for a whole time limit: let another worker try.
        logger.warning("no turn to run the job; requeueing", extra={"job_ids": job_ids[:10]})
        raise Reject(str(exc), requeue=True) from exc


def _consume_interactive_first(app: Celery, keys: Keys) -> None:
    """Consume the caption queue, then the bulk queue, then any other (``-Q captions`` alone gets both)."""
    # With queue_order_strategy="priority" (worker.celery_app) the consumed queues' order is the
    # order BRPOP names them in on every fetch, so the interactive queue must come first.
    first = [keys.caption_queue(), keys.bulk_queue()]
    others = [name for name in app.amqp.queues.consume_from if name not in first]
    app.amqp.queues.select([*first, *others])
    logger.info("caption worker queues", extra={"queues": [*first, *others]})


def _require_thread_pool(worker: Any) -> None:
    # The model lives in this process, with an event loop thread that forked children would not
    # have, so the threads pool is part of the design. Celery resolves -P after worker_init: here it
    # is still the name from the command line, whose default ("prefork") is indistinguishable from
    # an explicit -P prefork except by asking click where the value came from.
    pool = worker.pool_cls if isinstance(worker.pool_cls, str) else getattr(worker.pool_cls, "__module__", "")
    if pool == CAPTION_POOL or str(pool).endswith(".thread"):
        return
    if _is_pool_defaulted():
        worker.pool_cls = CAPTION_POOL
        logger.info("caption worker pool", extra={"pool": CAPTION_POOL, "concurrency": worker.concurrency})
        return
    raise UnsupportedPoolError(
        f"a caption worker runs Celery's threads pool only (-P {CAPTION_POOL}), not {pool!r}: "
        "its model and event loop live in the worker process"
    )


def _is_pool_defaulted() -> bool:
    """True when ``celery worker`` was given no -P (nor CELERY_POOL-style env), so threads is ours to pick."""
    context = click.get_current_context(silent=True)
    if context is None or "pool" not in context.params:
        return True  # not started from the command line (tests, embedding): nobody asked for a pool
    return context.get_parameter_source("pool") is click.core.ParameterSource.DEFAULT


def _serve_metrics(port: int) -> None:
    try:
        start_http_server(port)
    except OSError as exc:
        # A second worker on the same host: its metrics are lost, its captions are not.
        logger.warning("metrics port unavailable", extra={"port": port, "error": str(exc)})


def register_caption_task(app: Celery, settings: Settings, service: CaptionService | None = None) -> CaptionService:
    """Register ``CAPTION_TASK`` and ``CAPTION_CHUNK_TASK`` on ``app``, and the signals that load the model."""
    service = service or CaptionService(app, settings)

    # acks_late and reject_on_worker_lost come from shared.broker.config: a job's message is
    # acknowledged only after its result is recorded.
    @app.task(name=CAPTION_TASK, ignore_result=True)  # type: ignore[untyped-decorator]
    def caption(job_id: str) -> None:
        service.run(job_id)

    # bind=True: the message's task id is what the feeder counted toward the owner's cap.
    @app.task(name=CAPTION_CHUNK_TASK, ignore_result=True, bind=True)  # type: ignore[untyped-decorator]
    def caption_chunk(task: Any, job_ids: list[str], owner: str | None = None) -> None:
        service.run_chunk(job_ids, owner, task.request.id)

    # weak=False: the handlers are bound methods that nothing else keeps alive.
    signals.worker_init.connect(service.on_worker_init, weak=False)
    signals.worker_shutdown.connect(service.on_worker_shutdown, weak=False)
    return service
