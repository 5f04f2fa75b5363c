"""Dynamic batching: images wait briefly in groups of equal options and are captioned together.

A group runs as soon as it holds ``max_batch_size`` images or its oldest image has
waited ``max_wait_s``, whichever is first. One batch generates at a time, in a
dedicated thread, so the event loop keeps fetching the next batch's images while
the current one generates. A batch whose generate call fails is retried one image
at a time, so a bad image fails only its own job (LitServe fails the whole batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from shared.jobs import JobOptions
from worker import metrics

logger = logging.getLogger(__name__)

#: Captions a batch of images that share options; returns one caption per image, in order.
CaptionFn = Callable[[Sequence[Image.Image], JobOptions], list[str]]


@dataclass(frozen=True)
class BatchResult:
    """One image's caption and the batch it was captioned in."""

    caption: str
    batch_id: str
    batch_size: int
    batch_wait_s: float
    generate_s: float


# eq=False: pending images are compared by identity (equality would compare pixels).
@dataclass(eq=False)
class _Pending:
    image: Image.Image
    options: JobOptions
    ready_at: float
    future: asyncio.Future[BatchResult] = field(repr=False)


class Batcher:
    """Collects images from many jobs and captions them in batches, one batch at a time."""

    def __init__(self, caption_fn: CaptionFn, *, max_batch_size: int, max_wait_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.caption_fn = caption_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        # Insertion-ordered; each deque is oldest first.
        self._groups: dict[JobOptions, deque[_Pending]] = {}
        self._changed = asyncio.Event()
        # One thread: the model runs one generate at a time, and it uses every core it is given.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Stop batching; images still waiting get CancelledError."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for group in self._groups.values():
            for pending in group:
                pending.future.cancel()
        self._groups.clear()
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """Images waiting for a batch."""
        return sum(len(group) for group in self._groups.values())

    async def caption(self, image: Image.Image, options: JobOptions) -> BatchResult:
        """Caption ``image`` in the next batch of its options; raises what its generate raised."""
        loop = asyncio.get_running_loop()
        pending = _Pending(image, options, loop.time(), loop.create_future())
        self._groups.setdefault(options, deque()).append(pending)
        self._changed.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            # The job gave up (time limit): do not spend a batch slot on it.
            self._discard(pending)
            raise

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Cleared before looking, so a submission made while we look wakes the wait below.
            self._changed.clear()
            now = loop.time()
            batch = self._take_ready_batch(now)
            if batch:
                await self._run_batch(batch)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._next_due_in(now))

    def _take_ready_batch(self, now: float) -> list[_Pending]:
        """Pop the batch to run now: the full or overdue group whose oldest image waited longest."""
        ready = [
            (group[0].ready_at, options)
            for options, group in self._groups.items()
            if len(group) >= self.max_batch_size or now - group[0].ready_at >= self.max_wait_s
        ]
        if not ready:
            return []
        _, options = min(ready, key=lambda item: item[0])
        group = self._groups[options]
        batch = [group.popleft() for _ in range(min(self.max_batch_size, len(group)))]
        if not group:
            del self._groups[options]
        return batch

    def _next_due_in(self, now: float) -> float | None:
        """Seconds until the oldest waiting image is overdue, or None when nothing waits."""
        if not self._groups:
            return None
        oldest = min(group[0].ready_at for group in self._groups.values())
        return max(0.0, oldest + self.max_wait_s - now)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        batch_id = "batch_" + secrets.token_hex(6)
        options = batch[0].options
        started = loop.time()
        began = time.perf_counter()
        try:
            captions = await loop.run_in_executor(self._executor, self._caption_batch, batch, options)
        except Exception as exc:
            await self._isolate_failure(batch, exc, batch_id)
            return
        generate_s = time.perf_counter() - began
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_GENERATE.observe(generate_s)
        logger.info(
            "batch captioned",
            extra={"batch_id": batch_id, "batch_size": len(batch), "duration_s": round(generate_s, 4)},
        )
        for pending, caption in zip(batch, captions, strict=True):
            result = BatchResult(caption, batch_id, len(batch), started - pending.ready_at, generate_s)
            if not pending.future.done():
                pending.future.set_result(result)

    def _caption_batch(self, batch: list[_Pending], options: JobOptions) -> list[str]:
        captions = self.caption_fn([pending.image for pending in batch], options)
        # LitServe's guard: one output per input, or captions would go to the wrong jobs.
        if len(captions) != len(batch):
            raise RuntimeError(f"the model returned {len(captions)} captions for {len(batch)} images")
        return captions

    async def _isolate_failure(self, batch: list[_Pending], exc: Exception, batch_id: str) -> None:
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        # Which image broke the batch is unknown: caption each alone so only that one fails.
        logger.warning(
            "batch failed; captioning its images one by one",
            extra={"batch_id": batch_id, "batch_size": len(batch), "error": repr(exc)},
        )
        for pending in batch:
            await self._run_batch([pending])

    def _discard(self, pending: _Pending) -> None:
        group = self._groups.get(pending.options)
        if group is not None and pending in group:
            group.remove(pending)
            if not group:
                del self._groups[pending.options]
