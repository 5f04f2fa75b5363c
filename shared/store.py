"""Job records in Redis, and the one door through which ``status`` changes.

A job is a Redis hash whose fields are JSON values, with a TTL. Every status
change goes through :meth:`JobStore.transition`, a Lua script, so checking the
current status and writing the new one is atomic even with duplicate deliveries
(``acks_late`` makes those normal). Each change is published on the job's events
channel, which the API's long-poll listens to.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.batch_counts import BATCH_COUNTS_LUA
from shared.errors import QueueUnavailable
from shared.jobs import Job, JobStatus, sources_of
from shared.keys import Keys

logger = logging.getLogger(__name__)

# KEYS[1] job hash, KEYS[2] events channel, KEYS[3] the job counts hash, KEYS[4] the queued-jobs set,
# KEYS[5] the batch hashes' name prefix and KEYS[6] the ended-batches list (BATCH_COUNTS_LUA: an item's batch).
# ARGV[1] comma-separated statuses the job must be in ("" = any), ARGV[2] the new
# status JSON-encoded ("" = leave it), ARGV[3] the job id, ARGV[4..] field/value pairs (JSON values).
# Moving to running counts a delivery in `attempts`, which the poison-job guard reads.
# The counts (`entered:<status>`, `current:<status>`, `redelivered`) change in the same
# script, so the API's /metrics never sees a job counted in two states; a job that leaves
# `queued` leaves the set the orphan sweeper reads (worker.recovery).
_TRANSITION_LUA = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], 'status')
if ARGV[1] ~= '' then
  local allowed = false
  for s in string.gmatch(ARGV[1], '[^,]+') do
    if current == '"' .. s .. '"' then allowed = true break end
  end
  if not allowed then return 0 end
end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  if ARGV[2] == '"running"' then redis.call('HINCRBY', KEYS[1], 'attempts', 1) end
  if current == ARGV[2] then
    redis.call('HINCRBY', KEYS[3], 'redelivered', 1)
  else
    local to = string.sub(ARGV[2], 2, -2)
    redis.call('HINCRBY', KEYS[3], 'entered:' .. to, 1)
    redis.call('HINCRBY', KEYS[3], 'current:' .. to, 1)
    if current then redis.call('HINCRBY', KEYS[3], 'current:' .. string.sub(current, 2, -2), -1) end
  end
  if ARGV[2] ~= '"queued"' then redis.call('ZREM', KEYS[4], ARGV[3]) end
"""
    + BATCH_COUNTS_LUA
    + """
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return 1
"""
)

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def encode_fields(fields: Mapping[str, Any]) -> dict[str, str]:
    """JSON-encode each value (pydantic models and datetimes included)."""
    encoded: dict[str, str] = {}
    for name, value in fields.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        encoded[name] = json.dumps(value, default=_json_default)
    return encoded


def _json_default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot store {type(value).__name__} in a job record")


def decode_job(raw: Mapping[bytes | str, bytes | str]) -> Job:
    """Build a Job from the hash Redis returned."""
    data = {_text(name): json.loads(_text(value)) for name, value in raw.items()}
    return Job.model_validate(data)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    """Reads and writes job records; the only writer of a job's status."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._transition = redis.register_script(_TRANSITION_LUA)

    async def create(self, job: Job, *, upload: bytes | None = None, upload_ttl_s: int = 3_600) -> None:
        """Store a new job with its TTL, and its uploaded image (if any) in the same transaction."""
        key = self.keys.job(job.id)
        fields = encode_fields(job.model_dump(mode="json"))
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.ttl_s)
                if upload is not None:
                    pipe.set(self.keys.upload(job.id), upload, ex=upload_ttl_s)
                pipe.hincrby(self.keys.job_counts(), f"entered:{job.status}", 1)
                pipe.hincrby(self.keys.job_counts(), f"current:{job.status}", 1)
                if job.status is JobStatus.QUEUED:
                    pipe.zadd(self.keys.queued_jobs(), {job.id: job.created_at.timestamp()})
                await pipe.execute()
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc

    async def read_upload(self, job_id: str) -> bytes | None:
        """The job's uploaded image bytes, or None when they expired or were already deleted."""
        try:
            data: bytes | None = await self.redis.get(self.keys.upload(job_id))
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc
        return data

    async def delete_upload(self, job_id: str) -> None:
        """Drop the job's uploaded image once the job has ended (a redelivery must still find it before)."""
        try:
            await self.redis.delete(self.keys.upload(job_id))
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc

    async def queued_before(self, before_s: float, limit: int = 500) -> list[str]:
        """Ids of jobs still queued that were queued (or queued again) before ``before_s`` (epoch s), oldest first."""
        try:
            ids = await self.redis.zrangebyscore(self.keys.queued_jobs(), "-inf", before_s, start=0, num=limit)
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc
        return [_text(job_id) for job_id in ids]

    async def mark_requeued(self, job_id: str, at_s: float) -> None:
        """Note that ``job_id``'s task was queued again at ``at_s``; a job no longer queued is forgotten."""
        try:
            if await self.redis.exists(self.keys.job(job_id)):
                await self.redis.zadd(self.keys.queued_jobs(), {job_id: at_s}, xx=True)
            else:
                await self.redis.zrem(self.keys.queued_jobs(), job_id)
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc

    async def count_webhook_outcome(self, outcome: str) -> None:
        """Count one webhook attempt by its outcome (``delivered``, ``retrying``...), for the API's /metrics."""
        try:
            await self.redis.hincrby(self.keys.webhook_outcomes(), outcome, 1)  # type: ignore[misc]
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc

    async def get(self, job_id: str) -> Job | None:
        """The job, or None when it does not exist (or has expired)."""
        try:
            raw = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[misc]
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc
        return decode_job(raw) if raw else None

    async def get_many(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """The jobs that exist among ``job_ids``, in one round trip."""
        ids = list(job_ids)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                raws = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc
        return {job_id: decode_job(raw) for job_id, raw in zip(ids, raws, strict=True) if raw}

    async def transition(
        self,
        job_id: str,
        to_status: JobStatus,
        *,
        from_status: Iterable[JobStatus] | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to ``to_status`` and write ``fields``, atomically.

        ``from_status`` defaults to every status from which ``to_status`` is legal.
        Returns False, without writing anything, when the job is missing or not in
        one of those statuses: a duplicate delivery or a canceled job, not an error.
        """
        sources = sources_of(to_status) if from_status is None else frozenset(from_status)
        allowed = sources & sources_of(to_status)
        if not allowed:
            raise ValueError(f"no legal transition to {to_status} from {sorted(sources)}")
        changed = await self._run(job_id, ",".join(sorted(allowed)), json.dumps(str(to_status)), fields)
        if not changed:
            logger.debug("transition skipped", extra={"job_id": job_id, "to_status": str(to_status)})
        return changed

    async def update(self, job_id: str, *, only_if: Iterable[JobStatus] | None = None, **fields: Any) -> bool:
        """Write fields other than ``status`` on an existing job (optionally only in some statuses)."""
        if "status" in fields:
            raise ValueError("status changes go through transition()")
        statuses = ",".join(sorted(only_if)) if only_if is not None else ""
        return await self._run(job_id, statuses, "", fields)

    async def transition_many(
        self, job_ids: Sequence[str], to_status: JobStatus, *, from_status: Iterable[JobStatus], **fields: Any
    ) -> list[bool]:
        """:meth:`transition` for many jobs in one pipeline (a batch's cancel); one outcome per id."""
        allowed = ",".join(sorted(frozenset(from_status) & sources_of(to_status)))
        args: list[str] = [allowed, json.dumps(str(to_status)), ""]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.keys.job_counts()]
                    args[2] = job_id
                    await self._transition(keys=[*keys, *self._common_keys()], args=list(args), client=pipe)
                results = await pipe.execute()
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc
        return [bool(result) for result in results]

    def _common_keys(self) -> list[str]:
        # The keys a transition touches besides the job's own: the sweeper's set and its batch's names.
        return [self.keys.queued_jobs(), self.keys.batch_prefix(), self.keys.batches_ended()]

    async def _run(self, job_id: str, statuses: str, new_status: str, fields: Mapping[str, Any]) -> bool:
        args: list[str] = [statuses, new_status, job_id]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        try:
            keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.keys.job_counts()]
            result = await self._transition(keys=[*keys, *self._common_keys()], args=args)
        except REDIS_ERRORS as exc:
            raise QueueUnavailable("the job store (Redis) cannot be reached") from exc
        return bool(result)
