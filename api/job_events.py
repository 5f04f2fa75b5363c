"""Long-poll support: one pub/sub subscription per API process wakes the requests waiting on a job.

Every status change is published on the job's events channel by the store's
transition script. Instead of one subscription per waiting request, the process
holds one pattern subscription and wakes the waiters of the job named in the
channel. A waiter always re-reads the job after registering, so a change made
before the subscription (or during a reconnect) is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis

from shared.background import BackgroundTask
from shared.jobs import Job
from shared.keys import Keys
from shared.store import REDIS_ERRORS, JobStore

logger = logging.getLogger(__name__)


class JobEvents:
    """Wakes the coroutines waiting on a job whenever that job's status changes."""

    def __init__(self, redis: Redis, keys: Keys, *, reconnect_delay_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys
        self.reconnect_delay_s = reconnect_delay_s
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener = BackgroundTask("job-events-listener", self._listen)
        #: Set while the subscription is live (for readiness and tests).
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        """Start listening in the background (call from the running event loop)."""
        self._listener.start()

    async def stop(self) -> None:
        """Stop listening and wake every waiter so it answers with what it has."""
        await self._listener.stop()
        self._wake_all()

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set on every change of ``job_id`` while the block runs."""
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[job_id]

    async def wait_until_final(self, store: JobStore, job_id: str, timeout_s: float) -> Job | None:
        """The job once it is final or ``timeout_s`` has passed, whichever is first (None if missing)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with self.watch(job_id) as changed:
            while True:
                # Cleared before the read: a change after this point sets it again, so none is lost.
                changed.clear()
                job = await store.get(job_id)
                remaining = deadline - loop.time()
                if job is None or job.status.is_final or remaining <= 0:
                    return job
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except REDIS_ERRORS as exc:
                logger.warning("job events subscription lost; reconnecting", extra={"error": str(exc)})
            self.subscribed.clear()
            # Waiters re-read the job now, in case its change was published while we were away.
            self._wake_all()
            await asyncio.sleep(self.reconnect_delay_s)

    async def _listen_once(self) -> None:
        async with self.redis.pubsub() as pubsub:
            await pubsub.psubscribe(self.keys.job_events_pattern())
            self.subscribed.set()
            self._wake_all()
            async for message in pubsub.listen():
                if message.get("type") == "pmessage":
                    self._wake(_text(message["channel"]))

    def _wake(self, channel: str) -> None:
        job_id = self.keys.job_id_from_events_channel(channel)
        for event in self._waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
