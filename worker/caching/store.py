"""The cache in Redis: entries, leases, the LRU set that bounds them, and the counters /metrics reads.

Every change is one of four Lua scripts, kept as files beside this module with their KEYS and
ARGV written at their top: ``claim.lua`` (hit, lease or wait, for many keys at once),
``store.lua`` (write an entry and its URL links, evict past the bound, end the lease), ``lease.lua``
(renew or end leases) and ``peek.lua`` (a fresh URL's entry through its link, for many at once).

A **link** is a fresh URL's pointer to the entry of the image it served (``worker.intake.freshness``):
named like an entry (``u:`` and the URL key's digest, under the entries' prefix), a member of the
same LRU set, so the one bound and the one eviction cover entries and links alike. Its TTL is the
time its server said the answer stays fresh, never renewed by a hit.

Claims made in the same turn of the event loop go to Redis in one script call
(``worker.coalescing``): a chunk's jobs whose images arrive together cost one round trip between
them, not one each (the hit path's design, bench/README.md "The caption cache"; not measured on its
own, unlike worker.captioning.job_writes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from shared.jobs.store import map_redis_errors
from shared.keys import Keys
from worker.coalescing import TurnCoalescer

_WHAT = "the caption cache (Redis)"
_SCRIPTS = Path(__file__).resolve().parent

#: Replies of ``claim.lua`` other than an entry.
LEASED = "L"
WAIT = "W"
# An entry's value starts with its kind: a caption, or an input error.
_CAPTION = "C"
_ERROR = "E"


def _script(name: str) -> str:
    return (_SCRIPTS / name).read_text()


@dataclass(frozen=True)
class Entry:
    """A cached result: a caption, or an input error's code and message; and the job that produced it."""

    job_id: str
    #: A short digest of the producing job's owner: shows its job id only to the same owner.
    owner_tag: str
    caption: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    def encode(self) -> str:
        """The value stored in Redis: a kind letter, then a compact JSON array."""
        if self.caption is not None:
            return _CAPTION + json.dumps([self.caption, self.job_id, self.owner_tag], separators=(",", ":"))
        return _ERROR + json.dumps(
            [self.error_code, self.error_message, self.job_id, self.owner_tag], separators=(",", ":")
        )

    @classmethod
    def decode(cls, value: str) -> Entry:
        """The entry :meth:`encode` wrote."""
        fields: list[Any] = json.loads(value[1:])
        if value[0] == _CAPTION:
            caption, job_id, owner_tag = fields
            return cls(job_id=job_id, owner_tag=owner_tag, caption=caption)
        code, message, job_id, owner_tag = fields
        return cls(job_id=job_id, owner_tag=owner_tag, error_code=code, error_message=message)


#: One claim: the key's digest, the claiming job, whether it waited already.
_Claim = tuple[str, str, bool]
#: A link's LRU member (and, after the entries' prefix, its key's name) starts with this.
LINK_MEMBER_PREFIX = "u:"


@dataclass(frozen=True)
class Link:
    """A fresh URL's link to write: the URL key's digest, and how long its server said the answer stays fresh."""

    url_digest: str
    ttl_ms: int

    @property
    def member(self) -> str:
        """Its LRU member, and its key's name after the entries' prefix."""
        return LINK_MEMBER_PREFIX + self.url_digest


class CacheStore:
    """Reads and writes cache entries and leases; claims issued in one loop turn share one script call."""

    def __init__(self, redis: Redis, keys: Keys, *, max_entries: int, ttl_s: int, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.lease_ms = max(1, round(lease_s * 1000))
        self._claim = redis.register_script(_script("claim.lua"))
        self._store = redis.register_script(_script("store.lua"))
        self._lease = redis.register_script(_script("lease.lua"))
        self._peek = redis.register_script(_script("peek.lua"))
        self._claims: TurnCoalescer[_Claim, str] = TurnCoalescer(self._claim_all)
        self._peeks: TurnCoalescer[str, str] = TurnCoalescer(self._peek_all)

    async def claim(self, digest: str, job_id: str, *, waited: bool = False) -> Entry | str:
        """The entry under ``digest`` (a hit), else :data:`LEASED` (``job_id`` computes it) or :data:`WAIT`.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        reply = await self._claims.call((digest, job_id, waited))
        return reply if reply in (LEASED, WAIT) else Entry.decode(reply)

    async def _claim_all(self, claims: list[_Claim]) -> list[str]:
        """One ``claim.lua`` call for the claims of one loop turn; its replies, in order."""
        keys = [self.keys.cache_lru(), self.keys.cache_stats()]
        args: list[Any] = [_now_ms(), self.lease_ms, self.ttl_s]
        for digest, job_id, waited in claims:
            keys += [self.keys.cache_entry(digest), self.keys.cache_lease(digest)]
            args += [digest, job_id, "1" if waited else "0"]
        with map_redis_errors(_WHAT):
            replies = await self._claim(keys=keys, args=args)
        return [reply.decode() if isinstance(reply, bytes) else str(reply) for reply in replies]

    async def peek(self, url_digest: str) -> Entry | None:
        """The entry a fresh URL's link names (a hit without a download), or None.

        Raises:
            QueueUnavailable: Redis cannot be reached.
        """
        reply = await self._peeks.call(url_digest)
        return Entry.decode(reply) if reply else None

    async def _peek_all(self, url_digests: list[str]) -> list[str]:
        """One ``peek.lua`` call for the peeks of one loop turn; its replies, in order."""
        keys = [self.keys.cache_lru(), self.keys.cache_stats()]
        members = [LINK_MEMBER_PREFIX + digest for digest in url_digests]
        keys += [self.keys.cache_entry(member) for member in members]
        with map_redis_errors(_WHAT):
            replies = await self._peek(
                keys=keys, args=[_now_ms(), self.ttl_s, self.keys.cache_entry_prefix(), *members]
            )
        return [reply.decode() if isinstance(reply, bytes) else str(reply) for reply in replies]

    async def store(self, digest: str, entry: Entry, *, ttl_s: int, links: Sequence[Link] = ()) -> int:
        """Write ``entry`` for ``ttl_s`` seconds with its URL links, end its job's lease; returns the evictions."""
        writes = [(self.keys.cache_entry(digest), entry.encode(), ttl_s * 1000, digest)]
        return await self._write(digest, entry.job_id, writes, links)

    async def link(self, digest: str, links: Sequence[Link]) -> int:
        """Write fresh URLs' links to the entry ``digest`` (found by a hit); returns the evictions."""
        return await self._write(digest, "", [], links)

    async def _write(
        self, digest: str, job_id: str, writes: list[tuple[str, str, int, str]], links: Sequence[Link]
    ) -> int:
        writes += [(self.keys.cache_entry(link.member), digest, link.ttl_ms, link.member) for link in links]
        if not writes:
            return 0
        keys = [self.keys.cache_lru(), self.keys.cache_stats(), self.keys.cache_lease(digest)]
        args: list[str | int] = [_now_ms(), self.max_entries, self.keys.cache_entry_prefix(), self.ttl_s, job_id]
        for key, value, ttl_ms, member in writes:
            keys.append(key)
            args += [value, max(1, ttl_ms), member]
        with map_redis_errors(_WHAT):
            return int(await self._store(keys=keys, args=args))

    async def renew(self, leases: dict[str, str]) -> int:
        """Extend the leases (digest → job id) still held by their jobs; returns how many were."""
        return await self._change_leases(leases, self.lease_ms)

    async def release(self, leases: dict[str, str]) -> int:
        """End the leases (digest → job id) still held by their jobs: waiting jobs claim the keys again."""
        return await self._change_leases(leases, 0)

    async def _change_leases(self, leases: dict[str, str], lease_ms: int) -> int:
        if not leases:
            return 0
        keys = [self.keys.cache_lease(digest) for digest in leases]
        with map_redis_errors(_WHAT):
            return int(await self._lease(keys=keys, args=[lease_ms, *leases.values()]))


def _now_ms() -> int:
    return int(time.time() * 1000)
