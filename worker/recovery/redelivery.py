"""Recovery from dying workers: redelivered jobs run alone, and jobs whose task message was lost are queued again.

Running alone: a caption worker keeps its model in one process and runs many jobs in
it at once (the threads pool), so when a job kills the process (a native crash, the
OOM killer), every job in it dies too, and all of them come back (``acks_late``) with
``attempts`` counted up. A job found already ``running`` at pick-up is such a survivor,
or the killer: it is admitted only when nothing else runs in this worker, and nothing
else starts while it runs. The killer then dies alone on each attempt and reaches
``max_delivery_attempts`` by itself; the others succeed on their next, solitary, delivery.

Lost messages: kombu's Redis transport takes a message off the queue (BRPOP) before it
records it as unacknowledged, so a worker killed in between, or an API killed between
storing a job and queueing its task, leaves a job ``queued`` with no message anywhere.
:class:`OrphanSweeper` finds such jobs (queued for a whole redelivery timeout, yet in
no queue and vouched for by no entry of the running-jobs registry, ``worker.recovery.running_jobs``)
and queues their task again: a batch item as a chunk of one on the bulk queue, a single
job on the caption queue. Queued messages are read by decoding their body (a chunk names
many jobs; Celery's ``argsrepr`` header is truncated). kombu's internal ``unacked`` hash is
not read: a dead worker's registry entries vouch for its jobs until kombu has restored
their messages, which is all the unacked hash told.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from shared.broker.bulk_backlog import BulkBacklog
from shared.errors import QueueUnavailable
from shared.jobs.model import Job, JobStatus
from shared.jobs.store import REDIS_ERRORS, JobStore
from worker.recovery.running_jobs import read_vouched

logger = logging.getLogger(__name__)

#: How long the sweeper waits before it looks again for jobs it found nowhere: far longer than a message
#: takes from the queue into a task body and the registry's next write (``FLUSH_INTERVAL_S``).
RECHECK_S = 2.0

#: Queues one job's task again (its caption task, or a chunk of one for a batch item).
RequeueFn = Callable[[Job], Awaitable[None]]


class NotAdmittedError(Exception):
    """A delivery waited too long for its turn at the gate; its task goes back to the queue."""


class DeliveryGate:
    """Lets ordinary jobs run together and suspect jobs one at a time, alone (a writer-preferring RW lock)."""

    def __init__(self) -> None:
        self._ordinary = 0
        self._suspect_running = False
        self._suspects_waiting = 0
        self._changed = asyncio.Condition()

    @property
    def running(self) -> int:
        """Jobs admitted and not yet done (ordinary plus suspect)."""
        return self._ordinary + int(self._suspect_running)

    @contextlib.asynccontextmanager
    async def admit(self, *, suspect: bool, timeout_s: float) -> AsyncIterator[None]:
        """Hold the gate while the block runs: shared for ordinary jobs, exclusive for suspects.

        Raises:
            NotAdmittedError: the turn did not come within ``timeout_s``.
        """
        deadline = asyncio.get_running_loop().time() + timeout_s
        await (self._enter_suspect(deadline) if suspect else self._enter_ordinary(deadline))
        try:
            yield
        finally:
            await self._leave(suspect)

    async def _enter_ordinary(self, deadline: float) -> None:
        async with self._changed:
            # Waiting suspects go first, or a busy worker would never be empty for them.
            while self._suspect_running or self._suspects_waiting:
                await self._wait(deadline)
            self._ordinary += 1

    async def _enter_suspect(self, deadline: float) -> None:
        async with self._changed:
            self._suspects_waiting += 1
            try:
                while self._suspect_running or self._ordinary:
                    await self._wait(deadline)
            finally:
                self._suspects_waiting -= 1
                # A suspect that gave up may have been all that held ordinary jobs back.
                self._changed.notify_all()
            self._suspect_running = True

    async def _wait(self, deadline: float) -> None:
        """Wait for a change (the condition's lock held); the state is re-checked after, with no await between."""
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            if remaining <= 0:
                raise TimeoutError
            await asyncio.wait_for(self._changed.wait(), remaining)
        except TimeoutError as exc:
            raise NotAdmittedError("no turn at the delivery gate in time") from exc

    async def _leave(self, suspect: bool) -> None:
        async with self._changed:
            if suspect:
                self._suspect_running = False
            else:
                self._ordinary -= 1
            self._changed.notify_all()


class OrphanSweeper:
    """Queues again the jobs whose task message was lost between Redis and a worker that died."""

    def __init__(
        self,
        store: JobStore,
        *,
        queue_names: Sequence[str],
        requeue: RequeueFn,
        quiet_s: float,
        vouch_s: float,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.time,
        backlog: BulkBacklog | None = None,
    ) -> None:
        self.store = store
        #: The keys' bulk backlogs hold messages too: their jobs are accounted for (shared.broker.bulk_backlog).
        self.backlog = backlog
        self.redis: Redis = store.redis
        self.queue_names = list(queue_names)
        self.requeue = requeue
        self.quiet_s = quiet_s
        self.vouch_s = vouch_s
        self.recheck_s = recheck_s
        self.clock = clock
        self.started_s = clock()

    async def sweep(self) -> list[str]:
        """One round: queue again every job queued ``quiet_s`` ago whose message no longer exists; returns their ids."""
        candidates = await self.store.queued_before(self.clock() - self.quiet_s)
        if not candidates:
            return []
        missing = set(candidates) - await self._accounted_for()
        if missing:
            # A message on its way from the queue into a task body is in neither for a moment: look again.
            await asyncio.sleep(self.recheck_s)
            missing -= await self._accounted_for()
        requeued = []
        for job_id in (job_id for job_id in candidates if job_id in missing):
            job = await self.store.get(job_id)
            if job is not None and job.status is JobStatus.QUEUED:
                await self.requeue(job)
                logger.warning("orphaned job queued again", extra={"job_id": job_id})
                requeued.append(job_id)
            await self.store.mark_requeued(job_id, self.clock())
        return requeued

    async def sweep_forever(self, lock_key: str, interval_s: float) -> None:
        """Sweep every ``interval_s``; of all the workers, only the one holding ``lock_key`` sweeps a round."""
        while True:
            # A timer, not a wait on state: orphans make no noise.
            await asyncio.sleep(interval_s)
            try:
                if await self.redis.set(lock_key, "1", nx=True, ex=max(1, int(interval_s))):
                    await self.sweep()
            except (QueueUnavailable, *REDIS_ERRORS):
                logger.warning("orphan sweep skipped: Redis unavailable", exc_info=True)

    async def _accounted_for(self) -> set[str]:
        """Ids of the jobs with a message in a queue, or vouched for by the running-jobs registry."""
        # Queues first, in the order messages travel (a task takes its message from a queue, then holds
        # it); one caught between the two reads is seen by the second look, ``recheck_s`` later.
        # Backlogs before the queues: the feeder moves messages from one to the other.
        backlogs = await self.backlog.backlog_names() if self.backlog is not None else []
        async with self.redis.pipeline(transaction=True) as pipe:
            for queue_name in [*backlogs, *self.queue_names]:
                pipe.lrange(queue_name, 0, -1)
            waiting = await pipe.execute()
        vouched = await read_vouched(self.redis, self.store.keys, since_s=self._vouching_since())
        return vouched | {job_id for raws in waiting for raw in raws for job_id in job_ids_in_message(raw)}

    def _vouching_since(self) -> float:
        """Registry entries written since then still vouch for their job: kombu may not have restored its message.

        ``vouch_s`` assumes kombu sweeps all along, but only running consumers sweep: after every
        worker was down, an old entry may name a message nobody has restored yet. So until this
        process, whose own consumer sweeps, has run for ``vouch_s``, every entry vouches.
        """
        since_s = self.clock() - self.vouch_s
        return since_s if since_s >= self.started_s else float("-inf")


def job_ids_in_message(raw: bytes) -> list[str]:
    """The job ids a task message names: a kombu message as queued, or wrapped as ``[message, exchange, key]``.

    Celery's protocol 2 body is ``[args, kwargs, embed]``; the first argument is a job id (caption
    task) or a list of them (chunk task). Anything else names no job.
    """
    try:
        payload = json.loads(raw)
        message = payload[0] if isinstance(payload, list) else payload
        body: Any = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, binascii.Error):
        return []
    first = args[0] if isinstance(args, list) and args else None
    if isinstance(first, str):
        return [first]
    return [job_id for job_id in first if isinstance(job_id, str)] if isinstance(first, list) else []
