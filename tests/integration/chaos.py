"""Helpers for the reliability tests: submit jobs, read them straight from Redis, kill and restart processes.

Every wait is on state with a deadline (never a bare sleep), and everything a test
stops is started again by :meth:`Chaos.restore`, so the next test finds a whole stack.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from redis import Redis

from scripts.processes import ManagedProcess
from scripts.stack import LocalStack
from shared.jobs.model import Job
from shared.jobs.store import decode_job

#: How often state is polled while waiting on it.
POLL_S = 0.1
#: Longest a worker may take to load the tiny model and beat, on a loaded two-core machine.
WORKER_START_S = 120.0


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str | Callable[[], str]) -> None:
    """Return once ``predicate()`` holds; fail with ``what`` (or what it returns then) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s} s waiting for {described}")
        time.sleep(POLL_S)


class Chaos:
    """One reliability test's handle on the stack: its API, its Redis, its worker."""

    def __init__(self, stack: LocalStack, api: httpx.Client) -> None:
        self.stack = stack
        self.api = api
        self.redis = Redis.from_url(stack.redis_url)
        #: Worker starts made by :meth:`supervise` (each one a restart after a death).
        self.restarts = 0

    # --- jobs -----------------------------------------------------------------------------

    def submit(self, **body: Any) -> str:
        """POST a job; returns its id."""
        response = self.api.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def jobs(self, job_ids: list[str]) -> dict[str, Job]:
        """The jobs as stored, read in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.stack.keys.job(job_id))
            raws = pipe.execute()
        return {job_id: decode_job(raw) for job_id, raw in zip(job_ids, raws, strict=True) if raw}

    def count_in(self, job_ids: list[str], *statuses: str) -> int:
        """How many of ``job_ids`` are in one of ``statuses`` now."""
        return sum(job.status in statuses for job in self.jobs(job_ids).values())

    def wait_all_final(self, job_ids: list[str], *, timeout_s: float) -> dict[str, Job]:
        """Every job once all have ended."""
        wait_until(
            lambda: self.count_in(job_ids, "succeeded", "failed", "canceled", "expired") == len(job_ids),
            timeout_s=timeout_s,
            what=lambda: f"{len(job_ids)} jobs to end; now {self.status_counts(job_ids)}",
        )
        return self.jobs(job_ids)

    def status_counts(self, job_ids: list[str]) -> Counter[str]:
        """How many of ``job_ids`` are in each status."""
        return Counter(str(job.status) for job in self.jobs(job_ids).values())

    def job_counts(self) -> dict[str, int]:
        """The store's counts by status (what /metrics exports)."""
        raw = self.redis.hgetall(self.stack.keys.job_counts())
        return {name.decode(): int(value) for name, value in raw.items()}

    # --- processes ------------------------------------------------------------------------

    def worker(self) -> ManagedProcess:
        """The current caption worker."""
        assert self.stack.worker is not None
        return self.stack.worker

    def kill_worker(self) -> None:
        """SIGKILL the caption worker's whole process group (rq's kill_worker), and wait for it to be gone."""
        worker = self.worker()
        worker.signal_group(signal.SIGKILL)
        wait_until(lambda: not worker.is_running(), timeout_s=60, what="the killed worker to exit")

    def start_worker(self) -> ManagedProcess:
        """Start a caption worker and wait for its heartbeat."""
        self.stack.worker = self.stack.start_worker(WORKER_START_S)
        return self.stack.worker

    @contextlib.contextmanager
    def supervise(self) -> Iterator[None]:
        """Restart the caption worker whenever it dies, as compose's ``restart: unless-stopped`` does."""
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(POLL_S):
                if not self.worker().is_running():
                    # A worker that dies again before it is ready is simply started once more.
                    with contextlib.suppress(RuntimeError, TimeoutError):
                        self.start_worker()
                    self.restarts += 1

        watcher = threading.Thread(target=watch, name="worker-supervisor", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join(timeout=WORKER_START_S)

    def restore(self) -> None:
        """Bring back whatever a test stopped (Redis, the worker, the API)."""
        if self.stack.redis is None:
            self.stack.start_redis()
        if not self.worker().is_running():
            self.start_worker()
        if self.stack.api is None or not self.stack.api.is_running():
            self.stack.api = self.stack.start_api()

    # --- logs -----------------------------------------------------------------------------

    def log_events(self, process: str, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of ``process`` (all its incarnations) whose event is ``event``."""
        found = []
        for line in (self.stack.log_dir / f"{process}.log").read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == event:
                        found.append(record)
        return found

    def close(self) -> None:
        """Release the Redis client."""
        self.redis.close()
