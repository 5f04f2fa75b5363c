"""Status changes made in one turn of the worker's event loop go to Redis together, in one pipeline.

A chunk starts its jobs together, and a model batch ends its jobs together: each job still makes
its own :meth:`JobStore.transition` (one atomic script per job, its own outcome), but the scripts
issued while the loop runs one turn are sent as one pipeline and their replies read at once, instead
of a round trip each (what ioredis calls auto-pipelining). A lone call goes straight to Redis. With
it, the event loop's CPU per bulk item went from 0.73 to 0.55 ms, Redis's from 0.085 to 0.065 ms
(bench/README.md, "Worker CPU").
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

from shared.jobs.store import JobStore

_Call = tuple[list[str], list[str], "asyncio.Future[Any]"]


class CoalescingJobStore(JobStore):
    """A JobStore whose transitions issued in the same loop turn share one round trip to Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def _eval_transition(self, keys: list[str], args: list[str]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            # Runs after every callback already due in this turn: the other jobs woken with this one
            # (a batch's results, a chunk's start) add their calls first.
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        calls, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(calls))
        self._sending.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            results = await self._run_all(calls)
        except asyncio.CancelledError:
            for _, _, future in calls:
                future.cancel()  # the loop is closing: so do the callers
            raise
        except Exception as exc:  # each caller gets the error (its map_redis_errors makes it QueueUnavailable)
            for _, _, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(calls, results, strict=True):
            if future.done():  # its job gave up meanwhile (time limit); the write happened anyway
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _run_all(self, calls: list[_Call]) -> list[Any]:
        """Each call's reply (an exception for a call that failed alone), in order."""
        if len(calls) == 1:
            keys, args, _ = calls[0]
            return [await self._transition(keys=keys, args=args)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args, _ in calls:
                # EVALSHA alone: redis-py's script registration would add a SCRIPT EXISTS round trip.
                pipe.evalsha(self._transition.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError):
                # Redis lost its script cache (a restart): the script object loads it again.
                keys, args, _ = calls[index]
                results[index] = await self._transition(keys=keys, args=args)
        return results
