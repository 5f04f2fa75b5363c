"""Long-poll support: one pub/sub subscription per API process wakes the requests waiting on a job.

Every move to a final status is published on the job's events channel by the store's
transition script. Instead of one subscription per waiting request, the process
holds one pattern subscription and wakes the waiters of the job named in the
channel. A waiter always re-reads the job after registering, so a change made
before the subscription (or during a reconnect) is never missed. Waiters only wait
for a job to end, which is why moves to ``queued`` or ``running`` are not published
(and would wake nobody if they were).

A request that has just read the job (``GET /v1/jobs/{id}?wait`` reads it to check its
owner) need not read it again: it passes the listener's :meth:`~JobEvents.position` taken
before that read, and the waiter re-reads only if the listener saw the job end since then,
or cannot tell (a reconnect, or more ends than it remembers). With the API's other changes of
that session, a ``GET /v1/jobs/{id}`` fell from 805-965 to 390-415 µs of API CPU (bench/README.md,
"The API's share of a single job").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import NamedTuple

from redis.asyncio import Redis

from shared.background import BackgroundTask
from shared.error_codes import error_for_code
from shared.errors import JobEnded, WaitTimedOut
from shared.jobs.model import Job, JobStatus
from shared.jobs.store import REDIS_ERRORS, JobStore
from shared.keys import Keys

logger = logging.getLogger(__name__)

# What a move to a status that is not final would publish (the JSON of the status); the transition
# script publishes none, and the listener ignores them should an older script still run somewhere.
_NOT_FINAL_PAYLOADS = frozenset(json.dumps(str(status)).encode() for status in JobStatus if not status.is_final)
#: Job ends the listener remembers for :meth:`JobEvents.position` (a few seconds of a busy service).
RECENT_ENDS = 4096


class Position(NamedTuple):
    """Where the listener was: its subscription (a new one after each loss) and the ends it had seen."""

    subscription: int
    ends_seen: int


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
        self._subscription = 0
        self._ends_seen = 0
        # Job id -> the count of ends seen before its own, oldest first, at most RECENT_ENDS.
        self._recent_ends: dict[str, int] = {}

    def start(self) -> None:
        """Start listening in the background (call from the running event loop)."""
        self._listener.start()

    async def stop(self) -> None:
        """Stop listening and wake every waiter so it answers with what it has."""
        await self._listener.stop()
        self._lose_subscription()
        self._wake_all()

    def position(self) -> Position | None:
        """Where the listener is now (None while not subscribed): take it before reading a job to wait on."""
        return Position(self._subscription, self._ends_seen) if self.subscribed.is_set() else None

    def _may_have_ended(self, job_id: str, since: Position | None) -> bool:
        """False only when the listener has seen every end since ``since`` and none of ``job_id``'s."""
        if since is None or self.position() is None or since.subscription != self._subscription:
            return True
        if self._ends_seen - since.ends_seen > RECENT_ENDS:
            return True
        return self._recent_ends.get(job_id, -1) >= since.ends_seen

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``job_id`` ends (or may have: a lost subscription) while the block runs."""
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

    async def wait_until_final(
        self, store: JobStore, job_id: str, timeout_s: float, *, seen: Job | None = None, since: Position | None = None
    ) -> Job | None:
        """The job once it is final or ``timeout_s`` has passed, whichever is first (None if missing).

        ``seen``: the job as read after :meth:`position` answered ``since``; it stands for the
        first read unless the job may have ended since.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with self.watch(job_id) as changed:
            while True:
                # Cleared before the read: a change after this point sets it again, so none is lost.
                changed.clear()
                if seen is not None and not self._may_have_ended(job_id, since):
                    job: Job | None = seen
                else:
                    job = await store.get(job_id)
                seen = None
                remaining = deadline - loop.time()
                if job is None or job.status.is_final or remaining <= 0:
                    return job
                # asyncio.timeout, not wait_for: no task of its own per wait.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except REDIS_ERRORS as exc:
                logger.warning("job events subscription lost; reconnecting", extra={"error": str(exc)})
            self._lose_subscription()
            # Waiters re-read the job now, in case its change was published while we were away.
            self._wake_all()
            await asyncio.sleep(self.reconnect_delay_s)

    async def _listen_once(self) -> None:
        async with self.redis.pubsub() as pubsub:
            await pubsub.psubscribe(self.keys.job_events_pattern())
            self.subscribed.set()
            self._wake_all()
            async for message in pubsub.listen():
                if message.get("type") == "pmessage" and message["data"] not in _NOT_FINAL_PAYLOADS:
                    self._ended(self.keys.job_id_from_events_channel(_text(message["channel"])))

    def _lose_subscription(self) -> None:
        # Ends published from now until the next subscription may never reach us.
        self.subscribed.clear()
        self._subscription += 1
        self._recent_ends.clear()

    def _ended(self, job_id: str) -> None:
        self._recent_ends.pop(job_id, None)
        self._recent_ends[job_id] = self._ends_seen
        self._ends_seen += 1
        if len(self._recent_ends) > RECENT_ENDS:
            del self._recent_ends[next(iter(self._recent_ends))]
        for event in self._waiters.get(job_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def wait_for_caption(
    events: JobEvents, store: JobStore, job: Job, timeout_s: float, *, since: Position | None = None
) -> Job:
    """``job`` once it succeeded, for the routes that answer a caption, not a job (GET /caption, chat completions).

    Raises:
        WaitTimedOut: 504 ``wait_timeout`` with the job's URL: it did not end within ``timeout_s``.
        CaptionizerError: the job failed: its own error, rebuilt from its code (the status of that code).
        JobEnded: 409 ``job_error``: it was canceled or expired.
    """
    done = await events.wait_until_final(store, job.id, timeout_s, seen=job, since=since)
    if done is None or not done.status.is_final:
        raise WaitTimedOut(
            f"the caption is not ready after {timeout_s:g} s; poll the job",
            job_id=job.id,
            job_url=f"/v1/jobs/{job.id}",
        )
    if done.status is JobStatus.SUCCEEDED and done.caption is not None:
        return done
    if done.error is not None:
        extra = {"upstream_status": done.error.upstream_status} if done.error.upstream_status else {}
        raise error_for_code(done.error.code, done.error.message, job_id=job.id, **extra)
    raise JobEnded(f"the job ended {done.status}", job_id=job.id)
