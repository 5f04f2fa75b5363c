"""Status changes made in one turn of the worker's event loop go to Redis together, in one pipeline.

A chunk starts its jobs together, and a model batch ends its jobs together: each job still makes
its own :meth:`JobStore.transition` (one atomic script per job, its own outcome), but the scripts
issued while the loop runs one turn are sent as one pipeline and their replies read at once, instead
of a round trip each (what ioredis calls auto-pipelining). A lone call goes straight to Redis. With
it, the event loop's CPU per bulk item went from 0.73 to 0.55 ms, Redis's from 0.085 to 0.065 ms
(bench/README.md, "Worker CPU").
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import NoScriptError

from shared.jobs.store import JobStore
from worker.coalescing import TurnCoalescer

#: One transition script's KEYS and ARGV.
_Call = tuple[list[str], list[str]]


class CoalescingJobStore(JobStore):
    """A JobStore whose transitions issued in the same loop turn share one round trip to Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns: TurnCoalescer[_Call, Any] = TurnCoalescer(self._run_all)

    async def _eval_transition(self, keys: list[str], args: list[str]) -> Any:
        return await self._turns.call((keys, args))

    async def _run_all(self, calls: list[_Call]) -> list[Any]:
        """Each call's reply (an exception for a call that failed alone), in order."""
        if len(calls) == 1:
            keys, args = calls[0]
            return [await self._transition(keys=keys, args=args)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                # EVALSHA alone: redis-py's script registration would add a SCRIPT EXISTS round trip.
                pipe.evalsha(self._transition.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError):
                # Redis lost its script cache (a restart): the script object loads it again.
                keys, args = calls[index]
                results[index] = await self._transition(keys=keys, args=args)
        return results
