"""The running-jobs registry: which jobs each caption worker holds a task message for, as the orphan sweep reads it.

A delivery holds its job, or every job of its chunk, from the moment its task body starts
until it returns. Each worker process counts what its deliveries hold in memory and mirrors
it into a Redis sorted set of its own (``Keys.held_jobs``), each id scored by when it was
written, through one writer task that sends what changed at most every ``flush_interval_s``:
one round trip for many deliveries, none on a delivery's own path (bench/README.md, "The running-jobs
registry's cost per delivery": 3.7 µs of CPU and 8 writes for 20,000 deliveries, against 195.9 µs and
40,000 written through). Every write also
refreshes the set's expiry and the process's score in ``Keys.job_holders``, the index the
sweeper reads instead of scanning keys.

**An entry vouches for its job for ``vouch_s`` after it was written**: kombu's redelivery
timeout plus two of its restore sweeps (``shared.broker.config.restored_within_s``). That
one rule covers live and dead workers alike, without asking which is which: kombu restores
unacknowledged messages by age, whoever holds them, so a message held that long is back on
its queue (or taken again, with a newer entry) and the queue speaks for it from then on. A
dead worker's entries therefore keep its jobs from being queued a second time exactly until
kombu has put their messages back, and no longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from redis.asyncio import Redis

from shared.jobs.store import REDIS_ERRORS
from shared.keys import Keys

logger = logging.getLogger(__name__)

#: Longest a new hold waits before it is written; the sweeper looks twice, further apart than this.
FLUSH_INTERVAL_S = 0.05
# After a failed write, wait this long before the next try (the changes are kept, not lost).
_RETRY_AFTER_ERROR_S = 1.0


class RunningJobs:
    """One worker process's held jobs: counted in memory, mirrored into Redis behind one writer task."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        holder: str,
        *,
        vouch_s: float,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        #: Unique per process start: a restarted container reusing host and pid must not inherit the dead one's set.
        self.holder = holder
        self.vouch_s = vouch_s
        self.flush_interval_s = flush_interval_s
        self.clock = clock
        self._held: Counter[str] = Counter()
        # Changes not yet written: ids newly held (written with a fresh score) and ids no longer held.
        self._to_add: set[str] = set()
        self._to_remove: set[str] = set()
        self._writer: asyncio.Task[None] | None = None

    @property
    def held(self) -> frozenset[str]:
        """The job ids this process holds now."""
        return frozenset(self._held)

    @contextlib.contextmanager
    def holding(self, job_ids: Sequence[str]) -> Iterator[None]:
        """Hold ``job_ids`` while the block runs (one delivery); call on the worker's event loop."""
        self.hold(job_ids)
        try:
            yield
        finally:
            self.release(job_ids)

    def hold(self, job_ids: Sequence[str]) -> None:
        """Count one more delivery holding each id; written with a fresh score even if already held."""
        for job_id in job_ids:
            self._held[job_id] += 1
            self._to_add.add(job_id)
            self._to_remove.discard(job_id)
        self._wake_writer()

    def release(self, job_ids: Sequence[str]) -> None:
        """Count one delivery fewer for each id; an id no delivery holds leaves the registry."""
        for job_id in job_ids:
            self._held[job_id] -= 1
            if self._held[job_id] <= 0:
                del self._held[job_id]
                self._to_add.discard(job_id)
                self._to_remove.add(job_id)
        self._wake_writer()

    async def flush(self) -> None:
        """Write the pending changes now, in one transaction.

        Raises:
            redis.RedisError: the write failed; the changes stay pending for the next one.
        """
        to_add, to_remove = self._to_add, self._to_remove
        self._to_add, self._to_remove = set(), set()
        if not to_add and not to_remove:
            return
        now_s = self.clock()
        key = self.keys.held_jobs(self.holder)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                if to_add:
                    pipe.zadd(key, dict.fromkeys(to_add, now_s))
                if to_remove:
                    pipe.zrem(key, *to_remove)
                pipe.expire(key, math.ceil(self.vouch_s))
                pipe.zadd(self.keys.job_holders(), {self.holder: now_s})
                await pipe.execute()
        except BaseException:
            # Kept for the next write, unless a later hold or release has already superseded them.
            self._to_add |= {job_id for job_id in to_add if job_id in self._held}
            self._to_remove |= {job_id for job_id in to_remove if job_id not in self._held}
            raise

    async def close(self) -> None:
        """Stop the writer and write what is pending; drop the set if this process holds nothing."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.flush()
            if not self._held:
                # Anything still held stays, to vouch until kombu restores it (a stop mid-delivery).
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(self.keys.held_jobs(self.holder))
                    pipe.zrem(self.keys.job_holders(), self.holder)
                    await pipe.execute()

    def _wake_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_soon(), name="running-jobs")

    async def _write_soon(self) -> None:
        """Write the changes, at most every flush interval, until none are pending."""
        while self._to_add or self._to_remove:
            # Gathers the holds and releases of every delivery in the meantime into one write.
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush()
            except REDIS_ERRORS:
                logger.warning("running-jobs registry not written; retrying", extra={"holder": self.holder})
                await asyncio.sleep(_RETRY_AFTER_ERROR_S)


async def read_vouched(redis: Redis, keys: Keys, *, since_s: float) -> set[str]:
    """Ids of the jobs that some worker, live or dead, held at or after ``since_s`` (epoch s; two round trips).

    Holders whose last write is older than that can vouch for nothing any more: they leave the index here.
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(keys.job_holders(), "-inf", f"({since_s}")
        pipe.zrange(keys.job_holders(), 0, -1)
        _, holders = await pipe.execute()
    if not holders:
        return set()
    async with redis.pipeline(transaction=True) as pipe:
        for holder in holders:
            pipe.zrangebyscore(keys.held_jobs(_text(holder)), since_s, "+inf")
        held = await pipe.execute()
    return {_text(job_id) for job_ids in held for job_id in job_ids}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
