"""shared.background: one task per component, started once, cancelled and awaited on stop."""

from __future__ import annotations

import asyncio

from shared.background import BackgroundTask


def test_start_twice_runs_one_task_and_stop_cancels_it() -> None:
    async def scenario() -> None:
        runs = 0
        cancelled = asyncio.Event()

        async def run() -> None:
            nonlocal runs
            runs += 1
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        task = BackgroundTask("probe", run)
        task.start()
        task.start()
        await asyncio.sleep(0)  # let the task begin
        assert task.started and runs == 1
        assert [t.get_name() for t in asyncio.all_tasks()].count("probe") == 1
        await task.stop()
        assert cancelled.is_set() and not task.started
        assert "probe" not in [t.get_name() for t in asyncio.all_tasks()]

    asyncio.run(scenario())


def test_stop_without_start_does_nothing() -> None:
    async def scenario() -> None:
        task = BackgroundTask("never", lambda: asyncio.sleep(0))
        await task.stop()
        assert not task.started

    asyncio.run(scenario())
