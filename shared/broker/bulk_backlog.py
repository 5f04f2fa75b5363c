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

Fed round-robin is not enough when a key's chunks hang (issue #23: a batch on a host that never
answers): a worker holds a bounded number of chunk messages (``worker.broker.bulk_flow``) and would
hold only that key's, stop consuming, and leave another key's chunk in the queue for a whole fetch
timeout. So the feeder also caps the chunk messages each key has out, on the queue or held by a
worker: ``bulk_chunks_per_key`` per ready caption worker, split evenly between the keys with a backlog
(two hanging keys get half each, so together they never fill what a worker holds). A key at its cap is passed over on the
ring (its messages stay in its backlog); each message's task id is added to the key's out set
(``Keys.bulk_out``) when it is fed, and the worker removes it once that chunk has ended
(:meth:`BulkBacklog.release`), then feeds. Celery's own redelivery is untouched: a message a dead
worker held comes back to the queue and stays counted until a worker ends it; an id nobody released
(a message lost with its Redis) leaves the set after ``stale_s``.

The scripts name the backlog keys they build from the ring's entries (``ARGV``), not in ``KEYS``: the
deployment's Redis is not clustered (``infra/modules/redis.bicep``: ``NoCluster``).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from shared.broker.config import visibility_timeout_s
from shared.keys import Keys
from shared.settings import Settings

# KEYS[1] the key's backlog, KEYS[2] the ring of keys with a backlog. ARGV[1] the key (owner),
# ARGV[2...] the messages, in order. A key joins the ring once, at its tail, when its backlog was empty.
_APPEND_LUA = """
local before = redis.call('LLEN', KEYS[1])
for i = 2, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
if before == 0 and redis.call('LPOS', KEYS[2], ARGV[1]) == false then redis.call('RPUSH', KEYS[2], ARGV[1]) end
return redis.call('LLEN', KEYS[1])
"""
# KEYS[1] the bulk queue (kombu pushes with LPUSH and consumes with BRPOP), KEYS[2] the ring, KEYS[3] the
# ready workers (shared.heartbeats: scored by expiry). ARGV[1] most messages the queue may hold, ARGV[2] the
# backlog key prefix (a key's backlog is prefix .. key), ARGV[3] chunks one key may have out per ready worker,
# ARGV[4] the out-set key prefix, ARGV[5] seconds after which an unreleased id leaves its out set.
# Moves one message per turn from the key at the head of the ring, which goes back to the tail while it has
# more: round-robin over the keys with work. A key at its cap (ARGV[3] x ready workers, split between the keys
# on the ring) is passed over; once every key on the ring was passed over in a row, it stops. Returns how many
# messages moved.
_FEED_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local workers = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
-- The chunks out per ready worker are split between the keys with a backlog, so that however many keys
-- hang, all of them together never have more out than one key alone may: a worker always has a free
-- hand for the next key's message.
local keys_with_work = math.max(redis.call('LLEN', KEYS[2]), 1)
local cap = math.max(1, math.floor(tonumber(ARGV[3]) * math.max(workers, 1) / keys_with_work))
local stale_s = tonumber(ARGV[5])
local moved = 0
local passed_over = 0
while redis.call('LLEN', KEYS[1]) < tonumber(ARGV[1]) do
  local owner = redis.call('LPOP', KEYS[2])
  if not owner then break end
  local backlog = ARGV[2] .. owner
  local out = ARGV[4] .. owner
  redis.call('ZREMRANGEBYSCORE', out, '-inf', now - stale_s)
  if redis.call('ZCARD', out) >= cap then
    passed_over = passed_over + 1
  else
    passed_over = 0
    local message = redis.call('LPOP', backlog)
    if message then
      redis.call('LPUSH', KEYS[1], message)
      moved = moved + 1
      -- Celery's message format (protocol 2): the task id is in the headers. Anything else is not counted.
      local ok, id = pcall(function() return cjson.decode(message)['headers']['id'] end)
      if ok and type(id) == 'string' then
        redis.call('ZADD', out, now, id)
        redis.call('EXPIRE', out, math.ceil(stale_s))
      end
    end
  end
  if redis.call('LLEN', backlog) > 0 then redis.call('RPUSH', KEYS[2], owner) end
  if passed_over > 0 and passed_over >= redis.call('LLEN', KEYS[2]) then break end
end
return moved
"""


class BulkBacklog:
    """Each key's waiting chunk messages, and the round-robin feed of them onto the bulk queue."""

    def __init__(
        self, redis: Redis, keys: Keys, *, queue_depth: int, chunks_per_key: int = 8, stale_s: float = 3_600
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.queue_depth = queue_depth
        #: Chunk messages one key may have out (queued or held) per ready caption worker.
        self.chunks_per_key = chunks_per_key
        self.stale_s = stale_s
        self._append = redis.register_script(_APPEND_LUA)
        self._feed = redis.register_script(_FEED_LUA)

    @classmethod
    def for_settings(cls, redis: Redis, keys: Keys, settings: Settings) -> BulkBacklog:
        """The backlog as ``settings`` size it (``bulk_queue_depth``, ``bulk_chunks_per_key``)."""
        # An id nobody released leaves its out set well after any delivery could still hold it.
        stale_s = 2 * visibility_timeout_s(settings)
        return cls(
            redis, keys, queue_depth=settings.bulk_queue_depth, chunks_per_key=settings.bulk_chunks_per_key,
            stale_s=stale_s,
        )  # fmt: skip

    async def append(self, owner: str, messages: Sequence[bytes]) -> int:
        """Append ``owner``'s chunk messages (Celery's format, for the bulk queue) to its backlog; returns its length."""
        if not messages:
            return 0
        keys = [self.keys.bulk_backlog(owner), self.keys.bulk_ring()]
        return int(await self._append(keys=keys, args=[owner, *messages]))

    async def feed(self) -> int:
        """Move messages onto the bulk queue, round-robin over keys under their cap, until it holds ``queue_depth``.

        Returns how many moved.
        """
        keys = [self.keys.bulk_queue(), self.keys.bulk_ring(), self.keys.ready_workers()]
        args: list[str | int | float] = [
            self.queue_depth, self.keys.bulk_backlog(""), self.chunks_per_key, self.keys.bulk_out(""), self.stale_s,
        ]  # fmt: skip
        return int(await self._feed(keys=keys, args=args))

    async def release(self, owner: str, chunk_id: str) -> None:
        """The chunk message ``chunk_id`` of ``owner`` has ended: it no longer counts toward the key's cap."""
        await self.redis.zrem(self.keys.bulk_out(owner), chunk_id)

    async def chunks_out(self, owner: str) -> int:
        """How many of ``owner``'s chunk messages are out (fed, not yet ended)."""
        return int(await self.redis.zcard(self.keys.bulk_out(owner)))

    async def backlog_names(self) -> list[str]:
        """The backlog lists now holding messages (for the orphan sweep and /metrics)."""
        owners: list[bytes | str] = await self.redis.lrange(self.keys.bulk_ring(), 0, -1)  # type: ignore[misc]
        return [self.keys.bulk_backlog(owner.decode() if isinstance(owner, bytes) else str(owner)) for owner in owners]
