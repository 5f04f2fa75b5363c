"""Calls made in one turn of the worker's event loop, sent to Redis together, each caller still answered alone.

A chunk's jobs start together and a model batch's jobs end together, so their Redis calls are issued in
the same loop turn. :class:`TurnCoalescer` holds each call until the turn ends, hands all of them to one
``send_all`` (a pipeline, or one script call for many keys), and gives each caller its own reply or error:
what ioredis calls auto-pipelining. Used by ``worker.captioning.job_writes`` (status changes) and
``worker.caching.store`` (cache claims).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Call = TypeVar("Call")
Reply = TypeVar("Reply")

#: Sends every call of one turn and returns one reply per call, in order; an exception in the list fails that
#: call alone, an exception raised fails them all.
SendAll = Callable[[list[Call]], Awaitable[Sequence[Reply | Exception]]]


class TurnCoalescer(Generic[Call, Reply]):
    """Gathers the calls made in one loop turn and sends them with one ``send_all``."""

    def __init__(self, send_all: SendAll[Call, Reply]) -> None:
        self._send_all = send_all
        self._pending: list[tuple[Call, asyncio.Future[Reply]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, call: Call) -> Reply:
        """``call``'s reply, once the turn's calls have been sent together."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending.append((call, future))
        if len(self._pending) == 1:
            # Runs after every callback already due in this turn: the other jobs woken with this one
            # (a batch's results, a chunk's start, images arriving together) add their calls first.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(pending))
        self._sending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._sending.discard)

    async def _send(self, pending: list[tuple[Call, asyncio.Future[Reply]]]) -> None:
        futures = [future for _, future in pending]
        try:
            replies = await self._send_all([call for call, _ in pending])
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()  # the loop is closing: so do the callers
            raise
        except Exception as exc:  # every caller gets the error (their map_redis_errors makes it QueueUnavailable)
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, reply in zip(futures, replies, strict=True):
            if future.done():  # its job gave up meanwhile (time limit); the write happened anyway
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
