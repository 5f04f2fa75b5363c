"""Fair bulk scheduling: each key's batch chunks wait in a backlog of its own, fed to the bulk queue round-robin.

The bulk queue is one FIFO for every key: a key that queued 2,000 items on a host that never answers
held every other key's batch behind its chunks (issue #23: a one-item batch waited 59 s). So the API
no longer pushes a batch's chunk messages onto the Celery bulk queue. It appends them, already in
Celery's own format, to its key's backlog (``Keys.bulk_backlog``), and puts the key on the ring of
keys with work (``Keys.bulk_ring``). A feeder script then moves messages from the backlogs to the bulk
queue, one key after the other, only while the queue holds fewer than ``bulk_queue_depth`` messages.
The queue stays short, so a key that posts a small batch has its first chunk queued behind at most
that many chunks, whatever the others have in their backlogs.

Who feeds: the API right after it appends (an idle service starts at once), each caption worker
after each chunk it finishes (a slot opened), and each worker's heartbeat (a backstop, every
``worker_heartbeat_s``). Celery stays the transport: the messages are Celery's, moved whole from one
Redis list to another inside one script, so none is ever in a process's hands only, and the orphan
sweep reads the backlogs like the queues (``worker.recovery.redelivery``).

The scripts name the backlog keys they build from the ring's entries (``ARGV``), not in ``KEYS``: the
deployment's Redis is not clustered (``infra/modules/redis.bicep``: ``NoCluster``).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from shared.keys import Keys

# KEYS[1] the key's backlog, KEYS[2] the ring of keys with a backlog. ARGV[1] the key (owner),
# ARGV[2...] the messages, in order. A key joins the ring once, at its tail, when its backlog was empty.
_APPEND_LUA = """
local before = redis.call('LLEN', KEYS[1])
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
if before == 0 and redis.call('LPOS', KEYS[2], ARGV[1]) == false then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return redis.call('LLEN', KEYS[1])
"""
# KEYS[1] the bulk queue (kombu pushes with LPUSH and consumes with BRPOP), KEYS[2] the ring.
# ARGV[1] most messages the queue may hold, ARGV[2] the backlog key prefix (a key's backlog is prefix .. key).
# Moves one message per turn from the key at the head of the ring, which goes back to the tail while
# it has more: round-robin over the keys with work. Returns how many messages moved.
_FEED_LUA = """
local moved = 0
while redis.call('LLEN', KEYS[1]) < tonumber(ARGV[1]) do
  local owner = redis.call('LPOP', KEYS[2])
  if not owner then break end
  local backlog = ARGV[2] .. owner
  local message = redis.call('LPOP', backlog)
  if message then
    redis.call('LPUSH', KEYS[1], message)
    moved = moved + 1
  end
  if redis.call('LLEN', backlog) > 0 then redis.call('RPUSH', KEYS[2], owner) end
end
return moved
"""


class BulkBacklog:
    """Each key's waiting chunk messages, and the round-robin feed of them onto the bulk queue."""

    def __init__(self, redis: Redis, keys: Keys, *, queue_depth: int) -> None:
        self.redis = redis
        self.keys = keys
        self.queue_depth = queue_depth
        self._append = redis.register_script(_APPEND_LUA)
        self._feed = redis.register_script(_FEED_LUA)

    async def append(self, owner: str, messages: Sequence[bytes]) -> int:
        """Append ``owner``'s chunk messages (Celery's format, for the bulk queue) to its backlog; returns its length."""
        if not messages:
            return 0
        keys = [self.keys.bulk_backlog(owner), self.keys.bulk_ring()]
        return int(await self._append(keys=keys, args=[owner, *messages]))

    async def feed(self) -> int:
        """Move messages onto the bulk queue, round-robin over keys, until it holds ``queue_depth``; returns how many."""
        keys = [self.keys.bulk_queue(), self.keys.bulk_ring()]
        return int(await self._feed(keys=keys, args=[self.queue_depth, self.keys.bulk_backlog("")]))

    async def backlog_names(self) -> list[str]:
        """The backlog lists now holding messages (for the orphan sweep and /metrics)."""
        owners: list[bytes | str] = await self.redis.lrange(self.keys.bulk_ring(), 0, -1)  # type: ignore[misc]
        return [self.keys.bulk_backlog(owner.decode() if isinstance(owner, bytes) else str(owner)) for owner in owners]
