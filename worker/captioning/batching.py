"""Dynamic batching: prepared images wait briefly in groups of one prompt and are captioned together.

A group runs as soon as it holds ``max_batch_size`` images or its oldest image has
waited ``max_wait_s``, whichever is first. One batch generates at a time, in a
dedicated thread, so the event loop keeps fetching the next batch's images while
the current one generates: the model was inside ``generate`` 0.997-0.999 of every
``make bench-e2e`` run (bench/README.md, "End to end"). A batch whose generate call fails is retried one image
at a time, so a bad image fails only its own job (LitServe fails the whole batch).

Interactive images go first: among the groups ready to run, one holding an
interactive image wins, and in a group interactive images take the batch's first
places, so bulk work already in hand delays a single job by one batch at most.
Groups are keyed by prompt only: jobs that differ in ``max_new_tokens`` share a
batch, generated to the largest limit and cut per row (greedy decoding is
prefix-consistent, see ``model.Captioner.generate_from_tensors``).
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
from typing import Any

from shared.background import BackgroundTask
from shared.jobs.model import JobOptions
from worker.captioning import metrics

logger = logging.getLogger(__name__)

#: Captions a batch of prepared images (model inputs) sharing a prompt, each row within its own
#: ``max_new_tokens``; returns one caption per row, in order.
CaptionFn = Callable[[Sequence[Any], str | None, Sequence[int]], list[str]]


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
    inputs: Any
    options: JobOptions
    ready_at: float
    interactive: bool
    future: asyncio.Future[BatchResult] = field(repr=False)


class _Group:
    """The images waiting for one prompt, interactive ones apart so they can go first; each deque oldest first."""

    def __init__(self) -> None:
        self.interactive: deque[_Pending] = deque()
        self.bulk: deque[_Pending] = deque()

    def __len__(self) -> int:
        return len(self.interactive) + len(self.bulk)

    def add(self, pending: _Pending) -> None:
        (self.interactive if pending.interactive else self.bulk).append(pending)

    def remove(self, pending: _Pending) -> None:
        queue = self.interactive if pending.interactive else self.bulk
        if pending in queue:
            queue.remove(pending)

    def oldest_at(self) -> float:
        """When the group's oldest image became ready (the group must not be empty)."""
        return min(queue[0].ready_at for queue in (self.interactive, self.bulk) if queue)

    def rank(self) -> tuple[bool, float]:
        """Sort key among ready groups: those with interactive images first, then the oldest."""
        if self.interactive:
            return (False, self.interactive[0].ready_at)
        return (True, self.bulk[0].ready_at)

    def take(self, count: int) -> list[_Pending]:
        """Pop up to ``count`` images, interactive ones first."""
        taken: list[_Pending] = []
        for queue in (self.interactive, self.bulk):
            while queue and len(taken) < count:
                taken.append(queue.popleft())
        return taken

    def pending(self) -> list[_Pending]:
        return [*self.interactive, *self.bulk]


class Batcher:
    """Collects images from many jobs and captions them in batches, one batch at a time."""

    def __init__(
        self, caption_fn: CaptionFn, *, max_batch_size: int, max_wait_s: float, merge_lengths: bool = True
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.caption_fn = caption_fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        #: Whether jobs differing only in max_new_tokens share batches (greedy decoding only).
        self.merge_lengths = merge_lengths
        # By prompt: jobs that differ only in max_new_tokens share batches.
        self._groups: dict[tuple[str | None, int | None], _Group] = {}
        self._changed = asyncio.Event()
        # One thread: the model runs one generate at a time, and it uses every core it is given.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._loop = BackgroundTask("batcher", self._run)

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._loop.start()

    async def stop(self) -> None:
        """Stop batching; images still waiting get CancelledError."""
        await self._loop.stop()
        for group in self._groups.values():
            for pending in group.pending():
                pending.future.cancel()
        self._groups.clear()
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        """Images waiting for a batch."""
        return sum(len(group) for group in self._groups.values())

    async def caption(self, inputs: Any, options: JobOptions, *, interactive: bool = True) -> BatchResult:
        """Caption one prepared image in a coming batch of its prompt; raises what its generate raised.

        ``interactive`` images (single jobs) take places ahead of bulk ones (batch items).
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(inputs, options, loop.time(), interactive, loop.create_future())
        self._groups.setdefault(self._key(options), _Group()).add(pending)
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
            # asyncio.timeout, not wait_for: no task per wait (this loop turns once per batch or two).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_due_in(now)):
                    await self._changed.wait()

    def _take_ready_batch(self, now: float) -> list[_Pending]:
        """Pop the batch to run now, from a full or overdue group: one with interactive images, else the oldest."""
        ready = [
            (group.rank(), key)
            for key, group in self._groups.items()
            if len(group) >= self.max_batch_size or now - group.oldest_at() >= self.max_wait_s
        ]
        if not ready:
            return []
        _, key = min(ready, key=lambda item: item[0])
        group = self._groups[key]
        batch = group.take(self.max_batch_size)
        if not len(group):
            del self._groups[key]
        return batch

    def _next_due_in(self, now: float) -> float | None:
        """Seconds until the oldest waiting image is overdue, or None when nothing waits."""
        if not self._groups:
            return None
        oldest = min(group.oldest_at() for group in self._groups.values())
        return max(0.0, oldest + self.max_wait_s - now)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        batch_id = "batch_" + secrets.token_hex(6)
        started = loop.time()
        began = time.perf_counter()
        try:
            captions = await loop.run_in_executor(self._executor, self._caption_batch, batch)
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

    def _caption_batch(self, batch: list[_Pending]) -> list[str]:
        began_cpu = time.thread_time()
        limits = [pending.options.max_new_tokens for pending in batch]
        captions = self.caption_fn([pending.inputs for pending in batch], batch[0].options.prompt, limits)
        # This thread is the serial path: with a model that computes elsewhere (an accelerator, or the
        # bench's stand-ins), its CPU time is all the per-batch overhead no parallelism hides.
        metrics.GENERATE_THREAD_CPU.inc(time.thread_time() - began_cpu)
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
        key = self._key(pending.options)
        group = self._groups.get(key)
        if group is not None:
            group.remove(pending)
            if not len(group):
                del self._groups[key]

    def _key(self, options: JobOptions) -> tuple[str | None, int | None]:
        return (options.prompt, None if self.merge_lengths else options.max_new_tokens)
