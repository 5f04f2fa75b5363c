"""The objects the API's routes use, built once by ``create_app`` and reached only through ``api.deps``."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from api.admission import Admission
from api.batches.closer import BatchCloser
from api.batches.service import BatchSubmitter
from api.broker.publisher import TaskQueue
from api.http.auth import KeyRing
from api.http.ratelimit import RateLimiter
from api.jobs.events import JobEvents
from shared.batches.store import BatchStore
from shared.jobs.store import JobStore
from shared.keys import Keys
from shared.settings import Settings


@dataclass(frozen=True)
class Services:
    """Everything a request may need; a new dependency is a field here and a getter in ``api.deps``."""

    settings: Settings
    keys: Keys
    #: The client for commands (with a command timeout); the job events listener has its own.
    redis: Redis
    store: JobStore
    queue: TaskQueue
    job_events: JobEvents
    admission: Admission
    key_ring: KeyRing
    #: The submit budget (creating and canceling jobs).
    rate_limiter: RateLimiter
    #: The read budget (reading and long-polling one's own jobs), apart so polling never spends the submit one.
    read_rate_limiter: RateLimiter
    batch_store: BatchStore
    batch_submitter: BatchSubmitter
    #: Compacts the results of batches that ended and sends their webhooks (runs with the app's lifespan).
    batch_closer: BatchCloser
