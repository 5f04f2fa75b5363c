"""Chunk messages of a batch: each listed job runs as its own delivery, with bulk work in hand bounded and shared fairly.

One broker message (``CAPTION_CHUNK_TASK``) names a chunk of a batch's jobs, and the key that owns
them, and is acknowledged late, after every job in it has ended. Each job goes through
:meth:`JobRunner.run_seen`, the single-job path, so a job already final is skipped: a chunk
redelivered after its worker was killed redoes only the jobs not yet recorded, and its jobs found
``running`` are suspects that run alone (``worker.recovery.redelivery``), so a poison item is isolated
per item.

Chunks wait here, holding only their message, for room among the bulk images in hand
(``max_items_in_hand``), which :class:`ItemsInHand` shares between the keys: see its docstring. That
keeps memory and the batcher's backlog bounded whatever the prefetch, and lets an interactive job,
taken from the caption queue as soon as a pool thread is free (``queue_order_strategy="priority"``),
find at most that backlog ahead of it, which its priority in the batcher skips anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.jobs.model import Job, JobStatus
from worker.captioning.pipeline import JobRunner

logger = logging.getLogger(__name__)

#: The owner of chunks whose message names none (sent before owners were carried, or by a test).
UNKNOWN_OWNER = ""


@dataclass(eq=False)
class _Ticket:
    """One chunk waiting at the door: its owner, its images, and the future set when it enters."""

    owner: str
    items: int
    entered: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ItemsInHand:
    """Counts bulk images in hand, per key, and lets waiting chunks in fairly.

    A chunk enters when there is room: the images in hand plus its own are within ``limit`` (or none
    are in hand, so a chunk larger than the limit still runs, alone). Waiting chunks are let in
    round-robin by key, in arrival order within a key. And while two or more keys have chunks in hand
    or waiting, a key holding less than its fair share of the room (``limit`` over those keys) enters
    even when the room is full, while fewer than ``2 x limit`` images are in hand (so never more than that plus one chunk):
    a key whose images hang on a host that never answers fills the room for a whole fetch timeout,
    and another key's chunk must not wait behind it. Each image is counted out as its job ends
    (:meth:`ChunkRunner.run`), not when its whole chunk does.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the limit of bulk images in hand must be at least 1")
        self.limit = limit
        #: The hard bound: no chunk enters beyond its share once this many images are in hand.
        self.ceiling = 2 * limit
        self.count = 0
        self.by_owner: Counter[str] = Counter()
        # Keys with waiting chunks, in their round-robin order; each key's chunks in arrival order.
        self._waiting: OrderedDict[str, deque[_Ticket]] = OrderedDict()

    async def enter(self, items: int, owner: str = UNKNOWN_OWNER) -> None:
        """Wait for room, then count ``items`` of ``owner`` in."""
        ticket = _Ticket(owner, items)
        self._waiting.setdefault(owner, deque()).append(ticket)
        self._admit()
        try:
            await ticket.entered
        except asyncio.CancelledError:
            if ticket.entered.done() and not ticket.entered.cancelled():
                self.leave(items, owner)  # let in as it was cancelled: count it out again
            else:
                self._forget(ticket)
            raise

    def leave(self, items: int, owner: str = UNKNOWN_OWNER) -> None:
        """Count ``items`` of ``owner`` out and let waiting chunks in."""
        self.count -= items
        self.by_owner[owner] -= items
        if self.by_owner[owner] <= 0:
            del self.by_owner[owner]
        self._admit()

    def waiting(self) -> int:
        """How many chunks wait at the door."""
        return sum(len(tickets) for tickets in self._waiting.values())

    def _admit(self) -> None:
        """Let in every waiting chunk that has room, one key at a time, in round-robin order."""
        while True:
            ticket = next((queue[0] for queue in self._waiting.values() if self._has_room_for(queue[0])), None)
            if ticket is None:
                return
            queue = self._waiting[ticket.owner]
            queue.popleft()
            if queue:
                self._waiting.move_to_end(ticket.owner)  # its next chunk waits for the other keys' turns
            else:
                del self._waiting[ticket.owner]
            self.count += ticket.items
            self.by_owner[ticket.owner] += ticket.items
            ticket.entered.set_result(None)

    def _has_room_for(self, ticket: _Ticket) -> bool:
        if self.count == 0 or self.count + ticket.items <= self.limit:
            return True
        keys = len(self.by_owner.keys() | self._waiting.keys())
        if keys < 2:
            return False  # shares are between keys: alone, a key has the room, and only the room
        below_share = self.by_owner[ticket.owner] < self.limit / keys
        # Below the ceiling, not within it: a key's first chunk may be larger than the room (it is sized to
        # the batch, not to the worker), so the bound is the ceiling plus one chunk.
        return below_share and self.count < self.ceiling

    def _forget(self, ticket: _Ticket) -> None:
        queue = self._waiting.get(ticket.owner)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[ticket.owner]
        self._admit()


class ChunkRunner:
    """Runs chunks of job ids through the single-job path, a bounded number of images at a time."""

    def __init__(self, runner: JobRunner, *, max_items_in_hand: int) -> None:
        self.runner = runner
        self.in_hand = ItemsInHand(max_items_in_hand)

    async def run(self, job_ids: Sequence[str], owner: str = UNKNOWN_OWNER) -> list[JobStatus | None]:
        """Run every job of one chunk; returns each one's final status written by this delivery (None: none).

        Raises:
            QueueUnavailable: Redis went away; the chunk goes back to the queue, its ended jobs stay ended.
            NotAdmittedError: a suspect job found no turn alone in time; the chunk is redelivered.
        """
        ids = list(dict.fromkeys(job_ids))  # a listed id twice would run twice in parallel
        await self.in_hand.enter(len(ids), owner)
        in_hand = len(ids)

        async def run_one(job_id: str, seen: Job | None) -> JobStatus | None:
            nonlocal in_hand
            try:
                return await self.runner.run_seen(job_id, seen, interactive=False)
            finally:
                # Its image is out of hand: room for the next chunk, whatever its siblings still wait on.
                in_hand -= 1
                self.in_hand.leave(1, owner)

        try:
            seen = await self.runner.store.get_many(ids)
            outcomes = await asyncio.gather(
                *(run_one(job_id, seen.get(job_id)) for job_id in ids), return_exceptions=True
            )
        finally:
            self.in_hand.leave(in_hand, owner)  # what never ran: get_many failed, or the delivery was cancelled
        return _statuses_or_raise(outcomes)


def _statuses_or_raise(outcomes: list[JobStatus | BaseException | None]) -> list[JobStatus | None]:
    """The statuses, once every job had its turn; else the first error (QueueUnavailable, NotAdmittedError)."""
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
