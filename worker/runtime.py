"""What a caption worker process keeps resident: the model, an event loop, Redis, the fetch session, the batcher.

The model is loaded once, when the process starts, and warmed up; then a heartbeat
key says the worker is ready. Celery's pool threads hand job ids to the event loop
thread (:meth:`CaptionRuntime.run_job`), where every job's I/O runs concurrently and
the batcher gathers their images for the model.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from PIL import Image
from redis.asyncio import Redis

from model.errors import PromptTooLongError
from shared.celery_config import visibility_timeout_s
from shared.errors import PromptTooLong
from shared.heartbeats import WorkerHeartbeats
from shared.jobs import JobOptions, JobStatus, utc_now
from shared.keys import CAPTION_TASK, Keys
from shared.model_limits import ModelLimits, publish_model_limits
from shared.settings import EMBEDDED_MODEL, Settings
from shared.store import REDIS_ERRORS, JobStore
from shared.webhooks import SendTask, dispatch_webhook
from worker import metrics
from worker.batching import Batcher, CaptionFn
from worker.intake import decode_image, fetch_image_bytes, make_fetch_session
from worker.pipeline import JobRunner
from worker.recovery import OrphanSweeper

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Beyond the job's own time limit, how long a pool thread waits for the loop to answer.
_RUN_JOB_MARGIN_S = 30.0
_STOP_TIMEOUT_S = 30.0


class CaptionModel(Protocol):
    """What the worker needs of ``model.Captioner`` (tests pass a fake)."""

    name: str
    device: Any
    #: The side, in pixels, the model's processor resizes images to (read from the checkpoint).
    input_size_px: int
    #: Longest prompt, in tokens, and the tokenizer's kind ("bert-wordpiece" lets the API bound prompts).
    max_prompt_tokens: int
    prompt_tokenizer: str

    def caption(
        self,
        images: Sequence[Image.Image],
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        min_new_tokens: int | None = None,
    ) -> list[str]: ...


def load_captioner(settings: Settings) -> CaptionModel:
    """Load and warm up the model ``settings.model`` names: the embedded one, a folder or a Hub id."""
    # Imported here so a process that never captions (the webhook worker) never imports torch.
    from model.captioner import EMBEDDED_MODEL_DIR, Captioner

    source = EMBEDDED_MODEL_DIR if settings.model == EMBEDDED_MODEL else settings.model
    captioner: CaptionModel = Captioner.load(
        source, device=settings.device, dtype=settings.dtype, allow_download=settings.model_allow_download, warmup=True
    )
    return captioner


def is_on_gpu(captioner: CaptionModel) -> bool:
    """True when the model runs on CUDA."""
    return getattr(captioner.device, "type", str(captioner.device)) == "cuda"


def caption_fn_for(captioner: CaptionModel, settings: Settings) -> CaptionFn:
    """The batcher's view of the model: one call per batch of images sharing options."""

    def caption(images: Sequence[Image.Image], options: JobOptions) -> list[str]:
        try:
            return captioner.caption(
                images, prompt=options.prompt, max_new_tokens=options.max_new_tokens, num_beams=settings.num_beams
            )
        except PromptTooLongError as exc:
            # The caller's mistake, not ours: a 4xx code on the job instead of internal_error and a stack trace.
            raise PromptTooLong(str(exc)) from exc

    return caption


class CaptionRuntime:
    """One per caption worker process: start it once, run jobs from any thread, stop it at shutdown."""

    def __init__(self, settings: Settings, send_task: SendTask, captioner: CaptionModel) -> None:
        self.settings = settings
        self.send_task = send_task
        self.captioner = captioner
        self.keys = Keys(settings.key_prefix)
        self.batch_size = settings.batch_size_for(on_gpu=is_on_gpu(captioner))
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        #: Seconds the model took to load and warm up (reported in the heartbeat, for /metrics).
        self.model_load_s: float | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="caption-runtime", daemon=True)
        self._runner: JobRunner | None = None
        self._session: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open connections, start batching and the heartbeat (the model is already loaded)."""
        self._thread.start()
        self._call(self._open())
        metrics.MODEL_LOADED.set(1)
        logger.info(
            "caption worker ready",
            extra={"worker_id": self.worker_id, "model": self.captioner.name, "batch_size": self.batch_size},
        )

    def run_job(self, job_id: str) -> JobStatus | None:
        """Run one delivery of a job on the runtime's loop; called from Celery's pool threads."""
        if self._runner is None:
            raise RuntimeError("the caption runtime is not started")
        future = asyncio.run_coroutine_threadsafe(self._runner.run(job_id), self._loop)
        # A delivery may wait its turn at the gate (worker.recovery) for up to one time limit, then run one.
        return future.result(timeout=2 * self.settings.job_time_limit_s + _RUN_JOB_MARGIN_S)

    def stop(self) -> None:
        """Stop the heartbeat (and remove it), close connections and end the loop thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._close(), timeout_s=_STOP_TIMEOUT_S)
        finally:
            metrics.MODEL_LOADED.set(0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout_s)

    async def _open(self) -> None:
        # Made inside the loop: asyncio clients bind to the loop that first uses them.
        redis = Redis.from_url(self.settings.redis_url)
        store = JobStore(redis, self.keys, self.settings.job_ttl_s)
        session = make_fetch_session(self.settings)
        batcher = Batcher(
            caption_fn_for(self.captioner, self.settings),
            max_batch_size=self.batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
        )
        batcher.start()
        self._runner = JobRunner(
            self.settings, store, batcher,
            fetch=functools.partial(_fetch, session, self.settings),
            decode=functools.partial(
                decode_image, settings=self.settings, model_input_px=self.captioner.input_size_px
            ),
            model_name=self.captioner.name,
            on_event=functools.partial(dispatch_webhook, store, self.send_task),
        )  # fmt: skip
        self._session = session
        self._heartbeat = asyncio.create_task(self._beat_forever(redis), name="heartbeat")
        self._sweeper = self._start_sweeper(store)

    def _start_sweeper(self, store: JobStore) -> asyncio.Task[None]:
        """Look for jobs whose task message was lost, every half redelivery timeout (worker.recovery)."""
        quiet_s = visibility_timeout_s(self.settings)
        sweeper = OrphanSweeper(store, queue_name=self.keys.caption_queue(), requeue=self._requeue, quiet_s=quiet_s)
        lock = self.keys.orphan_sweep_lock()
        return asyncio.create_task(sweeper.sweep_forever(lock, quiet_s / 2), name="orphan-sweeper")

    async def _requeue(self, job_id: str) -> None:
        # Off the loop: Celery's publish blocks on the broker.
        await asyncio.to_thread(self.send_task, CAPTION_TASK, args=[job_id], queue=self.keys.caption_queue())

    async def _close(self) -> None:
        for task in (self._heartbeat, self._sweeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._runner is None:
            return
        redis = self._runner.store.redis
        try:
            await WorkerHeartbeats(redis, self.keys).remove(self.worker_id)
        except REDIS_ERRORS:
            logger.warning("could not remove the heartbeat", extra={"worker_id": self.worker_id})
        await self._runner.batcher.stop()
        await self._session.close()
        await redis.aclose()

    async def _beat(self, redis: Redis) -> None:
        """Say this worker is ready, for a few heartbeat periods (the key expires if the process dies)."""
        info = {
            "worker_id": self.worker_id,
            "model": self.captioner.name,
            "device": str(self.captioner.device),
            "batch_size": self.batch_size,
            "model_load_s": self.model_load_s,
            "at": utc_now().isoformat(),
        }
        ttl_s = 3 * self.settings.worker_heartbeat_s
        await WorkerHeartbeats(redis, self.keys).beat(self.worker_id, info, ttl_s=ttl_s)
        limits = ModelLimits(
            model=self.captioner.name,
            max_prompt_tokens=self.captioner.max_prompt_tokens,
            prompt_tokenizer=self.captioner.prompt_tokenizer,
        )
        await publish_model_limits(redis, self.keys, limits, ttl_s=ttl_s)

    async def _beat_forever(self, redis: Redis) -> None:
        while True:
            try:
                await self._beat(redis)
            except REDIS_ERRORS:
                logger.warning("heartbeat failed", exc_info=True, extra={"worker_id": self.worker_id})
            # A timer, not a wait on state: the key must be refreshed before it expires.
            await asyncio.sleep(self.settings.worker_heartbeat_s)


async def _fetch(session: Any, settings: Settings, url: str) -> bytes:
    return await fetch_image_bytes(session, url, settings)
