"""The bounds a worker keeps: its memory ceiling and how it waits for Redis.

Celery's own ``worker_max_memory_per_child`` and task time limits act only on the
prefork pool (the parent replaces or kills a child process). Every Captionizer worker
runs the threads pool (the caption worker refuses any other, ``worker.tasks``), so
neither is set here. The per-job time limit is therefore kept by the pipeline itself
(``asyncio.timeout`` with ``job_time_limit_s``, then ``job_timeout``), and the memory
ceiling here: after each task the worker reads its resident memory and, past
``worker_max_memory_mb``, starts Celery's warm shutdown, so the jobs in hand finish
and its supervisor (compose ``restart:``, Container Apps) starts a fresh process.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from shared.settings import Settings

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024


def resident_memory_mb() -> float | None:
    """This process's resident set size in MiB, from ``/proc`` (Linux); None where that is unavailable."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MIB


def request_warm_shutdown() -> None:
    """Ask this worker for Celery's warm shutdown (SIGTERM): running tasks finish, then it exits."""
    os.kill(os.getpid(), signal.SIGTERM)


class MemoryCeiling:
    """Restarts the worker, gracefully, once its resident memory passes ``limit_mb``."""

    def __init__(
        self,
        limit_mb: int,
        *,
        read_memory_mb: Callable[[], float | None] = resident_memory_mb,
        shut_down: Callable[[], None] = request_warm_shutdown,
    ) -> None:
        self.limit_mb = limit_mb
        self.read_memory_mb = read_memory_mb
        self.shut_down = shut_down
        self.tripped = False

    def check(self, **_: Any) -> bool:
        """After a task (Celery ``task_postrun``): True when the ceiling was passed and a restart asked for."""
        if self.tripped or self.limit_mb <= 0:
            return False
        used_mb = self.read_memory_mb()
        if used_mb is None or used_mb <= self.limit_mb:
            return False
        # Once: the shutdown waits for the other running tasks, which will end past the ceiling too.
        self.tripped = True
        logger.warning(
            "memory ceiling passed; restarting the worker after its running jobs",
            extra={"resident_mb": round(used_mb, 1), "limit_mb": self.limit_mb},
        )
        self.shut_down()
        return True


def apply_worker_limits(app: Celery, settings: Settings) -> MemoryCeiling:
    """Worker-only Celery settings, and the memory ceiling checked after every task."""
    app.conf.update(
        # Retry the broker forever (Celery gives up after 100 tries by default, ending the
        # worker): a Redis restart must be waited out, with jobs kept in hand, not fatal.
        broker_connection_max_retries=None,
        # Running jobs keep running when the broker connection drops: their records live
        # in Redis too and are written once it is back; acks_late redelivers the rest.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    ceiling = MemoryCeiling(settings.worker_max_memory_mb)
    if settings.worker_max_memory_mb and resident_memory_mb() is None:
        logger.warning("worker_max_memory_mb is set but this platform has no /proc; the ceiling is off")
    # weak=False: the bound method is kept alive by the signal alone.
    signals.task_postrun.connect(ceiling.check, weak=False)
    return ceiling
