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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.batch_counts import BATCH_COUNTS_LUA
from shared.errors import CapacityError, OwnerQuotaExceeded, QueueFull, QueueUnavailable
from shared.jobs import Job, JobStatus, sources_of
from shared.keys import Keys

logger = logging.getLogger(__name__)

# KEYS[1] job hash, KEYS[2] events channel, KEYS[3] the job counts hash, KEYS[4] the queued-jobs set,
# KEYS[5] queued jobs per owner, KEYS[6] pending upload bytes per owner (hashes, see _CREATE_LUA),
# KEYS[7] the batch hashes' name prefix and KEYS[8] the ended-batches list (BATCH_COUNTS_LUA: an item's batch).
# ARGV[1] comma-separated statuses the job must be in ("" = any), ARGV[2] the new
# status JSON-encoded ("" = leave it), ARGV[3] the job id, ARGV[4..] field/value pairs (JSON values).
# Moving to running counts a delivery in `attempts`, which the poison-job guard reads.
# The counts (`entered:<status>`, `current:<status>`, `redelivered`) change in the same
# script, so the API's /metrics never sees a job counted in two states; a job that leaves
# `queued` leaves the set the orphan sweeper reads (worker.recovery). A job admitted against
# its owner's shares gives them back here: its queue slot when it leaves `queued`, its upload
# bytes when it ends; the markers are deleted so nothing is given back twice.
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
  local owner = string.sub(redis.call('HGET', KEYS[1], 'owner') or '""', 2, -2)
  if ARGV[2] ~= '"queued"' and redis.call('HDEL', KEYS[1], 'share_queued') == 1 then
    redis.call('HINCRBY', KEYS[5], owner, -1)
  end
  local uploaded = tonumber(redis.call('HGET', KEYS[1], 'share_upload_bytes'))
  if uploaded and ARGV[2] ~= '"queued"' and ARGV[2] ~= '"running"' then
    redis.call('HDEL', KEYS[1], 'share_upload_bytes')
    redis.call('HINCRBY', KEYS[6], owner, -uploaded)
    redis.call('HINCRBY', KEYS[6], '*', -uploaded)
  end
"""
    + BATCH_COUNTS_LUA
    + """
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
return 1
"""
)

# KEYS[1] job hash, KEYS[2] upload, KEYS[3] job counts, KEYS[4] queued-jobs set, KEYS[5] queued jobs
# per owner, KEYS[6] pending upload bytes per owner ('*' holds the total). ARGV[1] job TTL s,
# ARGV[2] upload TTL s, ARGV[3] owner, ARGV[4] status, ARGV[5] job id, ARGV[6] queued-at (epoch s),
# ARGV[7] the upload ('' = none), ARGV[8] most queued jobs per owner, ARGV[9] most upload bytes per
# owner, ARGV[10] most upload bytes in all (0 = no limit), ARGV[11..] field/value pairs (JSON values).
# KEYS[7] the owner's job index (sorted set, score: created at).
# Returns {0} when stored, else {1|2|3, what the owner or everyone holds}: 1 the owner's queue share,
# 2 its upload share, 3 the total upload budget. Checking and counting in one script means
# concurrent requests of one key can never pass its share together.
_CREATE_LUA = """
local upload_bytes = string.len(ARGV[7])
local max_queued, max_owner_bytes, max_bytes = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local limited = max_queued > 0 or max_owner_bytes > 0 or max_bytes > 0
if limited and ARGV[4] == 'queued' then
  local queued = tonumber(redis.call('HGET', KEYS[5], ARGV[3]) or '0')
  if max_queued > 0 and queued >= max_queued then return {1, queued} end
end
if limited and upload_bytes > 0 then
  local held = tonumber(redis.call('HGET', KEYS[6], ARGV[3]) or '0')
  if max_owner_bytes > 0 and held + upload_bytes > max_owner_bytes then return {2, held} end
  local total = tonumber(redis.call('HGET', KEYS[6], '*') or '0')
  if max_bytes > 0 and total + upload_bytes > max_bytes then return {3, total} end
end
for i = 11, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if upload_bytes > 0 then redis.call('SET', KEYS[2], ARGV[7], 'EX', ARGV[2]) end
redis.call('HINCRBY', KEYS[3], 'entered:' .. ARGV[4], 1)
redis.call('HINCRBY', KEYS[3], 'current:' .. ARGV[4], 1)
if ARGV[4] == 'queued' then
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
  if limited then
    redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
    redis.call('HSET', KEYS[1], 'share_queued', '1')
  end
end
if limited and upload_bytes > 0 then
  redis.call('HINCRBY', KEYS[6], ARGV[3], upload_bytes)
  redis.call('HINCRBY', KEYS[6], '*', upload_bytes)
  redis.call('HSET', KEYS[1], 'share_upload_bytes', upload_bytes)
end
-- The owner's newest-first index (GET /v1/jobs); entries older than any record go in the same breath.
redis.call('ZADD', KEYS[7], ARGV[6], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', tonumber(ARGV[6]) - tonumber(ARGV[1]))
redis.call('EXPIRE', KEYS[7], ARGV[1])
return {0, 0}
"""

#: Redis failures that pass: unreachable, too slow, or full. Under ``noeviction`` a full Redis
#: refuses every write with "OOM command not allowed" (redis-py's OutOfMemoryError) until memory is freed.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, RedisOutOfMemoryError, OSError)


@contextmanager
def map_redis_errors(what: str = "the job store (Redis)") -> Iterator[None]:
    """Turn a passing Redis failure inside the block into QueueUnavailable (503 with Retry-After).

    The one place Redis's exceptions become ours, as httpx's ``map_exceptions`` does for
    its transports; any other Redis error (a bug in a script, say) stays what it is.
    """
    try:
        yield
    except RedisOutOfMemoryError as exc:
        raise QueueUnavailable(f"{what} is out of memory; retry later") from exc
    except REDIS_ERRORS as exc:
        raise QueueUnavailable(f"{what} cannot be reached") from exc


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


def _share_refusal(reason: int, held: int, limits: OwnerShares) -> CapacityError:
    if reason == 1:
        return OwnerQuotaExceeded(
            f"this key already has {held} jobs queued, its share of the queue ({limits.max_queued_jobs}); "
            "retry once some have started"
        )
    if reason == 2:
        return OwnerQuotaExceeded(
            f"this key's uploads waiting in the queue already take {held} bytes of its {limits.max_upload_bytes}; "
            "retry once some jobs have ended"
        )
    return QueueFull(f"uploads waiting in the queue already take {held} bytes, the most this service keeps")


def decode_job(raw: Mapping[bytes | str, bytes | str]) -> Job:
    """Build a Job from the hash Redis returned."""
    data = {_text(name): json.loads(_text(value)) for name, value in raw.items()}
    return Job.model_validate(data)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class OwnerShares:
    """How much of the service one owner (API key) may hold at once; 0 is no limit."""

    #: Jobs of one owner waiting in ``queued``.
    max_queued_jobs: int = 0
    #: Uploaded image bytes of one owner waiting in Redis for their jobs to end.
    max_upload_bytes: int = 0
    #: Uploaded image bytes of every owner together.
    max_total_upload_bytes: int = 0


class JobStore:
    """Reads and writes job records; the only writer of a job's status."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._transition = redis.register_script(_TRANSITION_LUA)
        self._create = redis.register_script(_CREATE_LUA)

    async def create(
        self, job: Job, *, upload: bytes | None = None, upload_ttl_s: int = 3_600, shares: OwnerShares | None = None
    ) -> None:
        """Store a new job with its TTL, and its uploaded image (if any), in one atomic script.

        With ``shares``, the job is stored only if its owner stays within them, and counts
        against them until it leaves ``queued`` (its queue slot) or ends (its upload bytes).

        Raises:
            OwnerQuotaExceeded: the owner already holds its share of the queue or of upload bytes.
            QueueFull: uploads of every owner together already fill ``max_total_upload_bytes``.
            QueueUnavailable: Redis cannot be reached, or is full.
        """
        limits = shares or OwnerShares()
        args: list[str | bytes] = [str(self.ttl_s), str(upload_ttl_s), job.owner, str(job.status), job.id]
        args += [repr(job.created_at.timestamp()), upload or b""]
        args += [str(limits.max_queued_jobs), str(limits.max_upload_bytes), str(limits.max_total_upload_bytes)]
        for name, value in encode_fields(job.model_dump(mode="json")).items():
            args += [name, value]
        keys = [self.keys.job(job.id), self.keys.upload(job.id), self.keys.job_counts(), self.keys.queued_jobs()]
        with map_redis_errors():
            refused, held = await self._create(
                keys=[*keys, *self._share_keys(), self.keys.owner_jobs(job.owner)], args=args
            )
        if refused:
            raise _share_refusal(int(refused), int(held), limits)

    def _share_keys(self) -> list[str]:
        return [self.keys.owner_queued_jobs(), self.keys.owner_upload_bytes()]

    async def get_many(self, job_ids: Iterable[str]) -> dict[str, Job]:
        """The jobs that exist among ``job_ids``, in one round trip."""
        ids = list(job_ids)
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                raws = await pipe.execute()
        return {job_id: decode_job(raw) for job_id, raw in zip(ids, raws, strict=True) if raw}

    async def owner_job_ids(
        self, owner: str, *, before: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` of ``owner``'s job ids with their creation time (epoch s), newest first.

        ``before`` is the (created_s, job_id) of the last entry already seen: only older entries
        follow (ties on the time are broken by id, as Redis orders them).
        """
        index = self.keys.owner_jobs(owner)
        with map_redis_errors():
            if before is None:
                rows = await self.redis.zrevrangebyscore(index, "+inf", "-inf", start=0, num=count, withscores=True)
            else:
                ties = await self.redis.zcount(index, before[0], before[0])
                rows = await self.redis.zrevrangebyscore(
                    index, before[0], "-inf", start=0, num=count + ties, withscores=True
                )
        entries = [(_text(member), float(score)) for member, score in rows]
        if before is not None:
            # Same score: Redis orders members in reverse lexical order, so "older" means a smaller id.
            entries = [(job_id, score) for job_id, score in entries if score < before[0] or job_id < before[1]]
        return entries[:count]

    async def forget_owner_jobs(self, owner: str, job_ids: Iterable[str]) -> None:
        """Drop index entries whose records have expired."""
        ids = list(job_ids)
        if not ids:
            return
        with map_redis_errors():
            await self.redis.zrem(self.keys.owner_jobs(owner), *ids)

    async def read_upload(self, job_id: str) -> bytes | None:
        """The job's uploaded image bytes, or None when they expired or were already deleted."""
        with map_redis_errors():
            data: bytes | None = await self.redis.get(self.keys.upload(job_id))
        return data

    async def delete_upload(self, job_id: str) -> None:
        """Drop the job's uploaded image once the job has ended (a redelivery must still find it before)."""
        with map_redis_errors():
            await self.redis.delete(self.keys.upload(job_id))

    async def queued_before(self, before_s: float, limit: int = 500) -> list[str]:
        """Ids of jobs still queued that were queued (or queued again) before ``before_s`` (epoch s), oldest first."""
        with map_redis_errors():
            ids = await self.redis.zrangebyscore(self.keys.queued_jobs(), "-inf", before_s, start=0, num=limit)
        return [_text(job_id) for job_id in ids]

    async def mark_requeued(self, job_id: str, at_s: float) -> None:
        """Note that ``job_id``'s task was queued again at ``at_s``; a job no longer queued is forgotten."""
        with map_redis_errors():
            if await self.redis.exists(self.keys.job(job_id)):
                await self.redis.zadd(self.keys.queued_jobs(), {job_id: at_s}, xx=True)
            else:
                await self.redis.zrem(self.keys.queued_jobs(), job_id)

    async def count_webhook_outcome(self, outcome: str) -> None:
        """Count one webhook attempt by its outcome (``delivered``, ``retrying``...), for the API's /metrics."""
        with map_redis_errors():
            await self.redis.hincrby(self.keys.webhook_outcomes(), outcome, 1)  # type: ignore[misc]

    async def get(self, job_id: str) -> Job | None:
        """The job, or None when it does not exist (or has expired)."""
        with map_redis_errors():
            raw = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[misc]
        return decode_job(raw) if raw else None

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
        with map_redis_errors():
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.keys.job_counts()]
                    args[2] = job_id
                    await self._transition(keys=[*keys, *self._common_keys()], args=list(args), client=pipe)
                results = await pipe.execute()
        return [bool(result) for result in results]

    def _common_keys(self) -> list[str]:
        # The keys a transition touches besides the job's own: the sweeper's set, the owners' shares
        # and its batch's names (KEYS[4..8] of _TRANSITION_LUA).
        return [self.keys.queued_jobs(), *self._share_keys(), self.keys.batch_prefix(), self.keys.batches_ended()]

    async def _run(self, job_id: str, statuses: str, new_status: str, fields: Mapping[str, Any]) -> bool:
        args: list[str] = [statuses, new_status, job_id]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        with map_redis_errors():
            keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.keys.job_counts()]
            result = await self._transition(keys=[*keys, *self._common_keys()], args=args)
        return bool(result)
