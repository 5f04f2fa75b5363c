"""Job records in Redis, and the one door through which ``status`` changes.

A job is a Redis hash whose fields are JSON values, with a TTL. Every status
change goes through :meth:`JobStore.transition`, a Lua script, so checking the
current status and writing the new one is atomic even with duplicate deliveries
(``acks_late`` makes those normal). Each move to a final status is published on the
job's events channel, which the API's long-poll listens to (moves to queued or running
are not: nobody waits for them).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic_core import PydanticSerializationError, to_json
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.errors import QueueUnavailable
from shared.jobs.model import Job, JobStatus, sources_of
from shared.jobs.scripts import CREATE_LUA, TRANSITION_LUA
from shared.jobs.shares import OwnerShares, share_refusal
from shared.keys import Keys

logger = logging.getLogger(__name__)

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
    """JSON-encode each value (pydantic models and datetimes included).

    pydantic's own serializer, in Rust: 3 µs for a job's final fields against 18 with ``json.dumps``
    and ``model_dump`` (every status change pays it). Datetimes come out as ``…Z``, which
    :func:`decode_job` reads back like any ISO 8601 time.
    """
    try:
        return {name: to_json(value).decode() for name, value in fields.items()}
    except PydanticSerializationError as exc:
        raise TypeError(f"cannot store {fields} in a job record: {exc}") from exc


#: Each status as transition.lua compares it: JSON text.
_STATUS_JSON = {status: json.dumps(str(status)) for status in JobStatus}


@functools.lru_cache(maxsize=128)  # a handful of (target, sources) pairs, asked at every status change
def _legal_sources(to_status: JobStatus, from_status: tuple[JobStatus, ...] | None) -> str:
    """The statuses of ``from_status`` (None: all) from which ``to_status`` is legal, as transition.lua's ARGV[1].

    Raises:
        ValueError: none is.
    """
    sources = sources_of(to_status) if from_status is None else frozenset(from_status)
    allowed = sources & sources_of(to_status)
    if not allowed:
        raise ValueError(f"no legal transition to {to_status} from {sorted(sources)}")
    return ",".join(sorted(allowed))


def decode_job(raw: Mapping[bytes | str, bytes | str]) -> Job:
    """Build a Job from the hash Redis returned.

    Each value is JSON text, so the hash is spliced into one JSON object and validated by pydantic's
    own parser: 26 µs against 92 for ``json.loads`` per field and validating the dict (bench/README.md,
    "The API's share of a single job").
    """
    members = b",".join(_json_name(name) + b":" + _bytes(value) for name, value in raw.items())
    return Job.model_validate_json(b"{" + members + b"}")


@functools.lru_cache(maxsize=256)  # a record's field names are few and always the same
def _json_name(name: bytes | str) -> bytes:
    return json.dumps(_text(name)).encode()


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    """Reads and writes job records; the only writer of a job's status."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s
        self._transition = redis.register_script(TRANSITION_LUA)
        self._create = redis.register_script(CREATE_LUA)

    async def create(
        self,
        job: Job,
        *,
        upload: bytes | None = None,
        upload_ttl_s: int = 3_600,
        shares: OwnerShares | None = None,
        max_queue_depth: int = 0,
    ) -> None:
        """Store a new job with its TTL, and its uploaded image (if any), in one atomic script.

        With ``shares``, the job is stored only if its owner stays within them, and counts
        against them until it leaves ``queued`` (its queue slot) or ends (its upload bytes).
        With ``max_queue_depth``, it is stored only while fewer caption tasks wait.

        Raises:
            OwnerQuotaExceeded: the owner already holds its share of the queue or of upload bytes.
            QueueFull: ``max_queue_depth`` tasks already wait, or uploads of every owner together
                already fill ``max_total_upload_bytes``.
            QueueUnavailable: Redis cannot be reached, or is full.
        """
        uploads = {job.id: upload} if upload else {}
        await self.create_many(
            [job], uploads, upload_ttl_s=upload_ttl_s, shares=shares, max_queue_depth=max_queue_depth
        )

    async def create_many(
        self,
        jobs: Sequence[Job],
        uploads: Mapping[str, bytes],
        *,
        upload_ttl_s: int,
        shares: OwnerShares | None = None,
        max_queue_depth: int = 0,
        is_batch: bool = False,
    ) -> None:
        """Store jobs of one owner, all or none, in one run of ``create.lua`` (every door comes here).

        A batch's items (``is_batch``) count as items in flight (``shares.max_items_in_flight``)
        instead of on the queue share, are not listed in the owner's job index, and are stored
        without their empty fields; their uploads count on the upload share like any job's.

        Raises:
            OwnerQuotaExceeded, QueueFull, TooManyItemsInFlight: a quota is full; nothing was stored.
            QueueUnavailable: Redis cannot be reached, or is full.
        """
        if not jobs:
            return
        limits = shares or OwnerShares()
        owner = jobs[0].owner
        max_queued = 0 if is_batch else limits.max_queued_jobs
        max_in_flight = limits.max_items_in_flight if is_batch else 0
        args: list[str | bytes] = [str(self.ttl_s), str(upload_ttl_s), owner, str(max_queued)]
        args += [str(limits.max_upload_bytes), str(limits.max_total_upload_bytes), str(max_queue_depth)]
        args += [str(max_in_flight), "0" if is_batch else "1", str(len(jobs))]
        keys = [self.keys.job_counts(), self.keys.queued_jobs(), *self._share_keys(), self.keys.owner_jobs(owner)]
        keys += [self.keys.caption_queue(), self.keys.items_in_flight(owner)]
        for job in jobs:
            fields = encode_fields(job.model_dump(mode="json", exclude_none=is_batch))
            args += [
                job.id,
                str(job.status),
                repr(job.created_at.timestamp()),
                uploads.get(job.id, b""),
                str(len(fields)),
            ]
            for name, value in fields.items():
                args += [name, value]
            keys += [self.keys.job(job.id), self.keys.upload(job.id)]
        with map_redis_errors():
            refused, held = await self._create(keys=keys, args=args)
        if refused:
            raise share_refusal(int(refused), int(held), limits)

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
        allowed = _legal_sources(to_status, None if from_status is None else tuple(from_status))
        changed = await self._run(job_id, allowed, _STATUS_JSON[to_status], fields)
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
        allowed = _legal_sources(to_status, tuple(from_status))
        args: list[str] = [allowed, _STATUS_JSON[to_status], ""]
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
        # and its batch's names (KEYS[4..9] of TRANSITION_LUA).
        batch_keys = [self.keys.batch_prefix(), self.keys.batches_ended(), self.keys.result_chunks_ended()]
        return [self.keys.queued_jobs(), *self._share_keys(), *batch_keys]

    async def _run(self, job_id: str, statuses: str, new_status: str, fields: Mapping[str, Any]) -> bool:
        args: list[str] = [statuses, new_status, job_id]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        with map_redis_errors():
            keys = [self.keys.job(job_id), self.keys.job_events(job_id), self.keys.job_counts()]
            result = await self._eval_transition([*keys, *self._common_keys()], args)
        return bool(result)

    async def _eval_transition(self, keys: list[str], args: list[str]) -> Any:
        """Run TRANSITION_LUA once (``worker.captioning.job_writes`` sends many of them in one round trip instead)."""
        return await self._transition(keys=keys, args=args)
