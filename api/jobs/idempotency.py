"""``Idempotency-Key`` on ``POST /v1/jobs``: one key and one body make one job, however often they are sent.

A key is claimed atomically (``SET NX``) with the new job's id and a fingerprint of
the request, for 24 hours (IETF draft-ietf-httpapi-idempotency-key-header). The same
key with the same body answers with that job; with another body it answers 422
``idempotency_conflict``. Keys are scoped by owner, so two callers' keys never meet,
and stored as digests, so a key of any shape makes a bounded Redis key name.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from redis.asyncio import Redis

from shared.errors import IdempotencyConflict, QueueUnavailable
from shared.jobs.model import JobCreate
from shared.jobs.store import REDIS_ERRORS, map_redis_errors
from shared.keys import Keys

logger = logging.getLogger(__name__)

#: How long a key keeps returning its job (the IETF draft suggests 24 hours).
IDEMPOTENCY_TTL_S = 86_400
#: Printable ASCII without spaces, as Stripe's keys and the IETF draft's UUIDs are (checked by the route).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"

# A replay that finds nothing stored yet waits this long in all for the first request to store it.
_REPLAY_POLLS = 40
_REPLAY_POLL_INTERVAL_S = 0.05

# KEYS[1] the claim. ARGV[1] the value this request wrote: delete only our own claim,
# so a slow failing request never frees a claim someone else made since.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def request_fingerprint(request: JobCreate, upload: bytes | None) -> str:
    """A digest of what was asked: the parsed body (so key order and spacing don't matter) and any uploaded file."""
    digest = hashlib.sha256(request.model_dump_json().encode())
    if upload is not None:
        digest.update(b"\x00upload\x00" + hashlib.sha256(upload).digest())
    return digest.hexdigest()


class Owned(Protocol):
    """A job or a batch: what an idempotency key stands for."""

    @property
    def owner(self) -> str: ...


_Owned = TypeVar("_Owned", bound=Owned)


async def read_replayed(
    read: Callable[[str], Awaitable[_Owned | None]], resource_id: str, owner: str, *, id_field: str
) -> _Owned:
    """What an earlier request with the same key made; it may still be storing it, so wait a moment.

    ``id_field`` names the id in the log record (``job_id``, ``batch_id``).

    Raises:
        QueueUnavailable: it is still not there (the first request is slow, or failed and released the key).
    """
    for _ in range(_REPLAY_POLLS):
        found = await read(resource_id)
        if found is not None and found.owner == owner:
            logger.info("idempotent replay", extra={id_field: resource_id, "owner": owner})
            return found
        await asyncio.sleep(_REPLAY_POLL_INTERVAL_S)
    raise QueueUnavailable("a request with this Idempotency-Key is still being processed; retry it")


@dataclass(frozen=True)
class Claim:
    """The job an idempotency key stands for; ``is_new`` when this request claimed it and must create the job."""

    job_id: str
    is_new: bool
    #: What the claim stores, so only this claim is ever released.
    value: str


class IdempotencyKeys:
    """Claims keys for new jobs and finds the job a key already stands for."""

    def __init__(self, redis: Redis, keys: Keys, *, ttl_s: int = IDEMPOTENCY_TTL_S) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._release = redis.register_script(_RELEASE_LUA)

    async def claim(self, owner: str, key: str, job_id: str, fingerprint: str) -> Claim:
        """Claim ``key`` for ``job_id``, or return the job it already stands for.

        Raises:
            IdempotencyConflict: the key was used with another request body.
            QueueUnavailable: Redis cannot be reached.
        """
        name = self._name(owner, key)
        value = json.dumps({"job_id": job_id, "fingerprint": fingerprint})
        # Twice at most: a claim that vanished between SET NX and GET was released by a failed request.
        for _ in range(2):
            with map_redis_errors():
                if await self.redis.set(name, value, nx=True, ex=self.ttl_s):
                    return Claim(job_id, True, value)
                existing = await self.redis.get(name)
            if existing is not None:
                return self._replay(existing, fingerprint)
        raise QueueUnavailable("a request with this Idempotency-Key is still being processed; retry it")

    async def accept_once(
        self, owner: str, key: str, job_id: str, fingerprint: str, accept: Callable[[], Awaitable[None]]
    ) -> str | None:
        """Run ``accept`` if this request claims ``key``; returns None then, else the id the key already stands for.

        Raises:
            IdempotencyConflict: the key was used with another request body.
            QueueUnavailable: Redis cannot be reached.
        """
        claim = await self.claim(owner, key, job_id, fingerprint)
        if not claim.is_new:
            return claim.job_id
        try:
            await accept()
        except Exception:
            # Never accepted: a retry with the same key must get a fresh chance, not this failure.
            await self.release(owner, key, claim)
            raise
        return None

    async def release(self, owner: str, key: str, claim: Claim) -> None:
        """Forget a claim whose job was never accepted, so a retry with the same key starts afresh."""
        try:
            await self._release(keys=[self._name(owner, key)], args=[claim.value])
        except REDIS_ERRORS:
            # It expires on its own; meanwhile a retry with this key answers with the failed job.
            logger.warning("could not release an idempotency key", extra={"job_id": claim.job_id})

    def _replay(self, raw: bytes | str, fingerprint: str) -> Claim:
        stored = json.loads(raw)
        if stored["fingerprint"] != fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request body", job_id=stored["job_id"]
            )
        return Claim(stored["job_id"], False, raw.decode() if isinstance(raw, bytes) else raw)

    def _name(self, owner: str, key: str) -> str:
        return self.keys.idempotency(owner, hashlib.sha256(key.encode()).hexdigest())
