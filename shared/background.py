"""One long-lived asyncio task that a component starts with the app or worker and stops with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any


class BackgroundTask:
    """Runs ``run()`` as a named task on the running loop; ``stop`` cancels it and waits for it to end."""

    def __init__(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.name = name
        self._run = run
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        """True from ``start`` until ``stop`` has finished."""
        return self._task is not None

    def start(self) -> None:
        """Start the task (call from the running event loop); a second call does nothing."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended; nothing when it was never started."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
