"""Where caption work goes: one rule for the API's publisher and the worker's requeue of lost messages.

A single job is one caption task on the interactive queue (``captions``); a batch's items travel as task
messages of job ids on the bulk queue (``captions-bulk``), behind every single job. The API publishes
through ``api/broker/publisher.py`` and the worker's orphan sweep through Celery's ``send_task``; both ask
this module which task and queue, so a job is never put back on a queue other than the one it came by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from shared.keys import CAPTION_CHUNK_TASK, CAPTION_TASK, Keys


class Route(NamedTuple):
    """One task message: the task's name, its arguments and its queue."""

    task: str
    args: list[Any]
    queue: str


def single_job_route(keys: Keys, job_id: str) -> Route:
    """A single job's caption task: its id, on the interactive queue."""
    return Route(CAPTION_TASK, [job_id], keys.caption_queue())


def batch_items_route(keys: Keys, job_ids: Sequence[str], owner: str | None = None) -> Route:
    """One task message of a batch's items: their ids and the key that owns them, on the bulk queue.

    The worker shares its room for bulk images between owners (``worker.captioning.chunks``) and ends
    the chunk's count toward its owner's cap on the bulk queue (``shared.broker.bulk_backlog``).
    """
    args: list[Any] = [list(job_ids)] if owner is None else [list(job_ids), owner]
    return Route(CAPTION_CHUNK_TASK, args, keys.bulk_queue())
