"""What the facade keeps beside the native records: batch input files, and each batch's file and line errors.

Both are Redis hashes that expire with the jobs (``job_ttl_s``), indexed per owner in a sorted set
for the list routes. A facade batch *is* a native batch (same id); its record here only adds
what OpenAI's batch object shows and the native batch does not hold.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from redis.asyncio import Redis

from api.openai.batch_lines import LineError
from shared.jobs.model import utc_now
from shared.jobs.store import map_redis_errors
from shared.keys import Keys

# How QueueUnavailable names this store.
_WHAT = "the file store (Redis)"


def new_file_id() -> str:
    """A random, unguessable file id (128 bits)."""
    return "file-" + secrets.token_urlsafe(16)


@dataclass(frozen=True)
class StoredFile:
    """A batch input file."""

    id: str
    owner: str
    filename: str
    created_at: datetime
    content: bytes


@dataclass(frozen=True)
class FacadeBatch:
    """What a facade batch adds to its native batch."""

    id: str
    owner: str
    input_file_id: str
    total_lines: int
    line_errors: list[LineError]
    metadata: dict[str, str] | None


class FacadeStore:
    """Reads and writes the facade's files and batch records."""

    def __init__(self, redis: Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_s = ttl_s

    async def save_file(self, owner: str, filename: str, content: bytes) -> StoredFile:
        """Store an input file for ``owner``; it expires after ``job_ttl_s``."""
        stored = StoredFile(new_file_id(), owner, filename, utc_now(), content)
        fields: dict[str, str | bytes] = {
            "owner": owner,
            "filename": filename,
            "created_at": stored.created_at.isoformat(),
            "content": content,
        }
        await self._save(self.keys.openai_file(stored.id), self.keys.openai_files(owner), stored.id, fields)
        return stored

    async def get_file(self, file_id: str) -> StoredFile | None:
        """The input file ``file_id``, or None."""
        with map_redis_errors(_WHAT):
            raw = await self.redis.hgetall(self.keys.openai_file(file_id))  # type: ignore[misc]
        if not raw:
            return None
        return StoredFile(
            id=file_id,
            owner=raw[b"owner"].decode(),
            filename=raw[b"filename"].decode(),
            created_at=datetime.fromisoformat(raw[b"created_at"].decode()),
            content=raw[b"content"],
        )

    async def save_batch(self, batch: FacadeBatch) -> None:
        """Store what the facade adds to native batch ``batch.id``."""
        fields: dict[str, str | bytes] = {
            "owner": batch.owner,
            "input_file_id": batch.input_file_id,
            "total_lines": str(batch.total_lines),
            "line_errors": json.dumps([error.__dict__ for error in batch.line_errors]),
            "metadata": json.dumps(batch.metadata),
        }
        await self._save(self.keys.openai_batch(batch.id), self.keys.openai_batches(batch.owner), batch.id, fields)

    async def get_batch(self, batch_id: str) -> FacadeBatch | None:
        """The facade's record of ``batch_id``, or None (not made through the facade, or expired)."""
        with map_redis_errors(_WHAT):
            raw = await self.redis.hgetall(self.keys.openai_batch(batch_id))  # type: ignore[misc]
        if not raw:
            return None
        return FacadeBatch(
            id=batch_id,
            owner=raw[b"owner"].decode(),
            input_file_id=raw[b"input_file_id"].decode(),
            total_lines=int(raw[b"total_lines"]),
            line_errors=[LineError(**error) for error in json.loads(raw[b"line_errors"])],
            metadata=json.loads(raw[b"metadata"]),
        )

    async def list_ids(self, index_key: str, *, after: str | None, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` ids of an owner's index, newest first, after id ``after``; and whether more follow."""
        with map_redis_errors(_WHAT):
            # Entries past their TTL leave the index here, not in a sweeper.
            await self.redis.zremrangebyscore(index_key, "-inf", utc_now().timestamp() - self.ttl_s)
            start = 0
            if after is not None:
                rank = await self.redis.zrevrank(index_key, after)
                start = 0 if rank is None else rank + 1
            ids = await self.redis.zrevrange(index_key, start, start + limit)
        decoded = [raw.decode() for raw in ids]
        return decoded[:limit], len(decoded) > limit

    async def _save(self, key: str, index_key: str, member: str, fields: dict[str, str | bytes]) -> None:
        with map_redis_errors(_WHAT):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)
                pipe.expire(key, self.ttl_s)
                pipe.zadd(index_key, {member: utc_now().timestamp()})
                pipe.expire(index_key, self.ttl_s)
                await pipe.execute()
