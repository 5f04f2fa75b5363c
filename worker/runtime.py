"""What a caption worker process keeps resident: the model, an event loop, Redis, the fetch session, the batcher.

The model is loaded once, when the process starts, and warmed up; then a heartbeat
key says the worker is ready. Celery's pool threads hand job ids to the event loop
thread through one bridge (:meth:`CaptionRuntime.run_job`, :meth:`CaptionRuntime.run_chunk`),
where every job's I/O runs concurrently. Decoding and the model's preprocessing run in
the loop's thread pool (``prepare_threads``), and the batcher hands ready inputs to
the one thread that calls the model.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import threading
from collections.abc import Awaitable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from PIL import Image
from redis.asyncio import Redis

from model.errors import PromptTooLongError
from shared.broker.bulk_backlog import BulkBacklog
from shared.broker.config import restored_within_s, visibility_timeout_s
from shared.broker.routing import batch_items_route, single_job_route
from shared.errors import PromptTooLong, QueueUnavailable
from shared.heartbeats import WorkerHeartbeats
from shared.intake.model_limits import ModelLimits, publish_model_limits
from shared.jobs.model import Job, JobStatus, utc_now
from shared.jobs.store import REDIS_ERRORS, JobStore
from shared.keys import Keys
from shared.redis_packing import pack_with_hiredis
from shared.settings import EMBEDDED_MODEL, Settings
from shared.webhooks.delivery import SendTask, dispatch_webhook
from worker.caching import CacheStore, CaptionCache
from worker.caching.identity import model_identity
from worker.captioning import metrics
from worker.captioning.batching import Batcher, CaptionFn
from worker.captioning.chunks import UNKNOWN_OWNER, ChunkRunner
from worker.captioning.job_writes import CoalescingJobStore
from worker.captioning.pipeline import JobRunner, PrepareFn
from worker.captioning.standins import load_standin
from worker.intake.decoders import DecodeProcesses
from worker.intake.images import ImageBytes, decode_image, fetch_image_bytes, make_fetch_session
from worker.recovery.redelivery import NotAdmittedError, OrphanSweeper
from worker.recovery.running_jobs import RunningJobs

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Beyond the job's own time limit, how long a pool thread waits for the loop to answer.
_RUN_JOB_MARGIN_S = 30.0
_STOP_TIMEOUT_S = 30.0


class CaptionModel(Protocol):
    """What the worker needs of ``model.Captioner`` (tests pass a fake, the bench a stand-in)."""

    name: str
    #: What identifies the weights (a digest or a commit): part of every caption cache key.
    revision: str
    device: Any
    #: The side, in pixels, the model's processor resizes images to (read from the checkpoint).
    input_size_px: int
    #: Longest prompt, in tokens, and the tokenizer's kind ("bert-wordpiece" lets the API bound prompts).
    max_prompt_tokens: int
    prompt_tokenizer: str
    #: Seconds to load the checkpoint, and to warm it up (measured once, by the model).
    load_time_s: float
    warmup_time_s: float

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        """The model's input for ``images``, one row per image."""

    def count_tokens(self, text: str | None) -> int:
        """Tokens the model's tokenizer makes of ``text`` (0 for none), for a job's ``usage``."""

    def generate_from_tensors(
        self, inputs: Sequence[Any], prompt: str | None, max_new_tokens: Sequence[int], num_beams: int = 1
    ) -> list[str]:
        """One caption per prepared row, each within its own token limit."""


def load_captioner(settings: Settings) -> CaptionModel:
    """Load and warm up the model ``settings.model`` names: the embedded one, a folder, a Hub id, or a stand-in."""
    standin = load_standin(settings.model)
    if standin is not None:
        logger.warning("bench-only stand-in model: captions are fixed text", extra={"model": standin.name})
        return standin
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
    """The batcher's view of the model: one call per batch of prepared images sharing a prompt."""

    def caption(inputs: Sequence[Any], prompt: str | None, max_new_tokens: Sequence[int]) -> list[str]:
        try:
            return captioner.generate_from_tensors(inputs, prompt, max_new_tokens, settings.num_beams)
        except PromptTooLongError as exc:
            # The caller's mistake, not ours: a 4xx code on the job instead of internal_error and a stack trace.
            raise PromptTooLong(str(exc)) from exc

    return caption


def prepare_fn_for(captioner: CaptionModel, settings: Settings, decoders: DecodeProcesses | None) -> PrepareFn:
    """Bytes to the model's input for one image: decode (bounded), then the model's preprocessing.

    With ``decoders`` the decode runs in a child process under ``decode_cpu_budget_s``; without
    (budget 0), decoding and preprocessing share one of the loop's threads.
    """

    def decode_and_preprocess(data: bytes) -> Any:
        return captioner.preprocess([decode_image(data, settings, model_input_px=captioner.input_size_px)])

    async def prepare(data: bytes) -> Any:
        if decoders is None:
            return await asyncio.to_thread(decode_and_preprocess, data)
        image = await decoders.decode(data)
        return await asyncio.to_thread(captioner.preprocess, [image])

    return prepare


class CaptionRuntime:
    """One per caption worker process: start it once, run jobs from any thread, stop it at shutdown."""

    def __init__(self, settings: Settings, send_task: SendTask, captioner: CaptionModel) -> None:
        self.settings = settings
        self.send_task = send_task
        self.captioner = captioner
        self.keys = Keys(settings.key_prefix)
        self.batch_size = settings.batch_size_for(on_gpu=is_on_gpu(captioner))
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self._loop = asyncio.new_event_loop()
        # asyncio.to_thread's pool: decoding and preprocessing, in parallel (worker.captioning.pipeline).
        self._prepare_threads = settings.prepare_threads or os.cpu_count() or 1
        self._loop.set_default_executor(ThreadPoolExecutor(self._prepare_threads, thread_name_prefix="prepare"))
        # Decoding child processes, one per prepare thread (worker.intake.decoders), started by start(); None
        # when the budget is 0.
        self._decoders: DecodeProcesses | None = None
        # Each key's batch chunks waiting for the bulk queue (shared.broker.bulk_backlog); made in _open.
        self._backlog: BulkBacklog | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="caption-runtime", daemon=True)
        self._runner: JobRunner | None = None
        self._chunks: ChunkRunner | None = None
        self._session: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._running: RunningJobs | None = None
        self._cache: CaptionCache | None = None

    @property
    def items_in_hand(self) -> int:
        """Bulk images this worker holds at once (worker.captioning.chunks): ``bulk_items_in_hand``, else three batches."""
        return self.settings.bulk_items_in_hand or 3 * self.batch_size

    def start(self) -> None:
        """Start the decoding children, open connections, start batching and the heartbeat (the model is loaded)."""
        if self.settings.decode_cpu_budget_s:
            # Now, in the main thread, not on first use: a warm shutdown ends the forkserver with the
            # worker's process group, and the jobs in hand then need children already running.
            self._decoders = DecodeProcesses(
                self.settings, model_input_px=self.captioner.input_size_px, processes=self._prepare_threads
            )
            self._decoders.start()
        self._thread.start()
        self._call(self._open())
        metrics.MODEL_LOADED.set(1)
        logger.info(
            "caption worker ready",
            extra={"worker_id": self.worker_id, "model": self.captioner.name, "batch_size": self.batch_size},
        )

    def run_job(self, job_id: str) -> JobStatus | None:
        """Run one delivery of an interactive job on the runtime's loop; called from Celery's pool threads."""
        if self._runner is None:
            raise RuntimeError("the caption runtime is not started")
        # A delivery may wait its turn at the gate (worker.recovery.redelivery) for up to one time limit, then run one.
        timeout_s = 2 * self.settings.job_time_limit_s + _RUN_JOB_MARGIN_S
        return self._call(self._holding([job_id], self._runner.run(job_id)), timeout_s=timeout_s)

    def run_chunk(
        self, job_ids: Sequence[str], owner: str = UNKNOWN_OWNER, chunk_id: str | None = None
    ) -> list[JobStatus | None]:
        """Run one delivery of a batch chunk (worker.captioning.chunks); called from Celery's pool threads.

        ``owner`` is the key the chunk's message names and ``chunk_id`` the message's task id: once the
        chunk has ended it stops counting toward the key's cap on the bulk queue (shared.broker.bulk_backlog).
        """
        if self._chunks is None:
            raise RuntimeError("the caption runtime is not started")
        delivery = self._released(owner, chunk_id, self._fed(self._chunks.run(job_ids, owner)))
        # Past the redelivery timeout the broker hands the chunk to another worker anyway.
        return self._call(self._holding(job_ids, delivery), timeout_s=visibility_timeout_s(self.settings))

    def stop(self) -> None:
        """Stop the heartbeat (and remove it), close connections and end the loop thread."""
        if not self._thread.is_alive():
            if self._decoders is not None:
                self._decoders.close()
            if self._thread.ident is None and not self._loop.is_closed():
                self._loop.close()  # never started
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
        """The one bridge from a Celery thread into the loop: run ``coro`` there and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=timeout_s)

    async def _holding(self, job_ids: Sequence[str], delivery: Awaitable[T]) -> T:
        """Run one delivery with its jobs in the running-jobs registry (worker.recovery.running_jobs)."""
        if self._running is None:
            raise RuntimeError("the caption runtime is not started")
        with self._running.holding(job_ids):
            return await delivery

    async def _fed(self, delivery: Awaitable[T]) -> T:
        """Refill the bulk queue from the keys' backlogs (this chunk's message just left it), then run the delivery."""
        await self._feed_bulk_queue()
        return await delivery

    async def _released(self, owner: str, chunk_id: str | None, delivery: Awaitable[T]) -> T:
        """Run a chunk's delivery; once its message is done with, take it off its key's out set and feed."""
        try:
            result = await delivery
        except (QueueUnavailable, NotAdmittedError):
            raise  # rejected with requeue (worker.tasks): the message goes back to the queue, still out
        except Exception:
            await self._release_chunk(owner, chunk_id)  # acknowledged all the same (acks_late on failure)
            raise
        await self._release_chunk(owner, chunk_id)
        return result

    async def _release_chunk(self, owner: str, chunk_id: str | None) -> None:
        if chunk_id is None or self._backlog is None:
            return
        try:
            await self._backlog.release(owner, chunk_id)
        except REDIS_ERRORS:
            # It stays counted until its entry goes stale (shared.broker.bulk_backlog).
            logger.warning("releasing a chunk from its key's cap failed", exc_info=True)
            return
        await self._feed_bulk_queue()  # the key may be under its cap again

    async def _feed_bulk_queue(self) -> None:
        if self._backlog is None:
            return
        try:
            await self._backlog.feed()
        except REDIS_ERRORS:
            # The backlog keeps the messages; the next chunk or heartbeat feeds them.
            logger.warning("feeding the bulk queue failed", exc_info=True)

    async def _open(self) -> None:
        # Made inside the loop: asyncio clients bind to the loop that first uses them.
        # hiredis packs the commands: redis-py's Python packer was an eighth of the loop's CPU (shared.redis_packing).
        redis = pack_with_hiredis(Redis.from_url(self.settings.redis_url))
        store = CoalescingJobStore(redis, self.keys, self.settings.job_ttl_s)
        session = make_fetch_session(self.settings)
        batcher = Batcher(
            caption_fn_for(self.captioner, self.settings),
            max_batch_size=self.batch_size,
            max_wait_s=self.settings.max_batch_wait_ms / 1000,
            # Beam search is not prefix-consistent: only greedy decoding merges token limits.
            merge_lengths=self.settings.num_beams == 1,
        )
        batcher.start()
        self._cache = CaptionCache(
            CacheStore(
                redis, self.keys,
                max_entries=self.settings.cache_max_entries, ttl_s=self.settings.cache_ttl_s,
                lease_s=self.settings.cache_lease_s,
            ),
            self.settings,
            model=model_identity(self.captioner),
        )  # fmt: skip
        self._runner = JobRunner(
            self.settings, store, batcher,
            fetch=functools.partial(_fetch, session, self.settings),
            prepare=prepare_fn_for(self.captioner, self.settings, self._decoders),
            model_name=self.captioner.name,
            count_tokens=self.captioner.count_tokens,
            on_event=functools.partial(dispatch_webhook, store, self.send_task),
            cache=self._cache,
        )  # fmt: skip
        self._chunks = ChunkRunner(self._runner, max_items_in_hand=self.items_in_hand)
        self._session = session
        self._backlog = BulkBacklog.for_settings(redis, self.keys, self.settings)
        self._heartbeat = asyncio.create_task(self._beat_forever(redis), name="heartbeat")
        holder = f"{self.worker_id}:{secrets.token_hex(4)}"
        self._running = RunningJobs(redis, self.keys, holder, vouch_s=restored_within_s(self.settings))
        self._sweeper = self._start_sweeper(store)

    def _start_sweeper(self, store: JobStore) -> asyncio.Task[None]:
        """Look for jobs whose task message was lost, every half redelivery timeout (worker.recovery.redelivery)."""
        quiet_s = visibility_timeout_s(self.settings)
        queues = [self.keys.caption_queue(), self.keys.bulk_queue()]
        vouch_s = restored_within_s(self.settings)
        sweeper = OrphanSweeper(
            store, queue_names=queues, requeue=self._requeue, quiet_s=quiet_s, vouch_s=vouch_s,
            backlog=self._backlog,
        )  # fmt: skip
        lock = self.keys.orphan_sweep_lock()
        return asyncio.create_task(sweeper.sweep_forever(lock, quiet_s / 2), name="orphan-sweeper")

    async def _requeue(self, job: Job) -> None:
        # A batch item goes back behind the interactive jobs, as a task message of one: the API's own rule.
        is_item = getattr(job, "batch_id", None)
        owner = getattr(job, "owner", None)
        route = batch_items_route(self.keys, [job.id], owner) if is_item else single_job_route(self.keys, job.id)
        # Off the loop: Celery's publish blocks on the broker.
        await asyncio.to_thread(self.send_task, route.task, args=route.args, queue=route.queue)

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
        if self._running is not None:
            await self._running.close()
        if self._cache is not None:
            await self._cache.close()
        await self._runner.batcher.stop()
        await self._session.close()
        if self._decoders is not None:
            self._decoders.close()
        await redis.aclose()

    async def _beat(self, redis: Redis) -> None:
        """Say this worker is ready, for a few heartbeat periods (the key expires if the process dies)."""
        info = {
            "worker_id": self.worker_id,
            "model": self.captioner.name,
            "device": str(self.captioner.device),
            "batch_size": self.batch_size,
            "model_load_s": round(self.captioner.load_time_s + self.captioner.warmup_time_s, 3),
            "at": utc_now().isoformat(),
        }
        ttl_s = 3 * self.settings.worker_heartbeat_s
        await WorkerHeartbeats(redis, self.keys).beat(self.worker_id, info, ttl_s=ttl_s)
        limits = ModelLimits(
            model=self.captioner.name,
            max_prompt_tokens=self.captioner.max_prompt_tokens,
            prompt_tokenizer=self.captioner.prompt_tokenizer,
            embedded=self.settings.model == EMBEDDED_MODEL,
        )
        await publish_model_limits(redis, self.keys, limits, ttl_s=ttl_s)

    async def _beat_forever(self, redis: Redis) -> None:
        while True:
            try:
                await self._beat(redis)
            except REDIS_ERRORS:
                logger.warning("heartbeat failed", exc_info=True, extra={"worker_id": self.worker_id})
            # A backstop: chunks and the API feed the bulk queue as they go (shared.broker.bulk_backlog).
            await self._feed_bulk_queue()
            # A timer, not a wait on state: the key must be refreshed before it expires.
            await asyncio.sleep(self.settings.worker_heartbeat_s)


async def _fetch(session: Any, settings: Settings, url: str) -> ImageBytes:
    return await fetch_image_bytes(session, url, settings)
