"""The Lua that keeps a batch's counts current as its items change status.

It runs inside :meth:`shared.jobs.store.JobStore.transition`'s script, so an item's status
and its batch's counts change in one atomic step, whichever process moves the item
(a worker finishing it, the API canceling it). It expects the transition script's
locals: ``current`` (the old status, JSON-encoded, or false), ``ARGV[2]`` (the new
status, JSON-encoded), ``ARGV[3]`` (the job id), ``KEYS[1]`` (the job hash), ``KEYS[7]``
(the batch hash names' prefix), ``KEYS[8]`` (the list of ended batches the API closes)
and ``KEYS[9]`` (the list of results chunks the API compacts).

It also counts each results chunk's ended items (``e:<chunk>``): the item that ends the
last of a chunk's ``RESULTS_CHUNK_ITEMS`` lists ``<batch_id>:<chunk>`` for compaction
(``shared.batches.item_results``), so a running batch's finished results leave their job records
chunk by chunk. The batch's last chunk, usually partial, is compacted when the batch ends.
"""

from __future__ import annotations

from shared.batches.results import RESULTS_CHUNK_ITEMS

#: The statuses an item never leaves, as the Lua table below spells them.
_FINAL_LUA_TABLE = "{succeeded=true, failed=true, canceled=true, expired=true}"

# A batch ends when every item it holds has ended and no more items are coming (no
# `open` field): the item that ends last pushes the batch id for the API to close.
# `inflight_key` is the owner's items-in-flight counter, which the API raised at submit.
BATCH_COUNTS_LUA = f"""
  local batch_field = redis.call('HGET', KEYS[1], 'batch_id')
  if batch_field and batch_field ~= 'null' and current ~= ARGV[2] then
    local batch_id = string.sub(batch_field, 2, -2)
    local batch = KEYS[7] .. batch_id
    if redis.call('EXISTS', batch) == 1 then
      local final = {_FINAL_LUA_TABLE}
      local to = string.sub(ARGV[2], 2, -2)
      local from = current and string.sub(current, 2, -2) or ''
      redis.call('HINCRBY', batch, 'n:' .. to, 1)
      if current then redis.call('HINCRBY', batch, 'n:' .. from, -1) end
      local t = redis.call('TIME')
      local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
      if to == 'running' then redis.call('HSETNX', batch, 'started_at', now) end
      if final[to] and not final[from] then
        local in_flight = redis.call('HGET', batch, 'inflight_key')
        if in_flight then redis.call('DECR', in_flight) end
        local index = tonumber(string.match(ARGV[3], '_(%d+)$'))
        if index then
          local chunk = math.floor(index / {RESULTS_CHUNK_ITEMS})
          if redis.call('HINCRBY', batch, 'e:' .. chunk, 1) == {RESULTS_CHUNK_ITEMS} then
            redis.call('HDEL', batch, 'e:' .. chunk)
            redis.call('RPUSH', KEYS[9], batch_id .. ':' .. chunk)
          end
        end
        local done = redis.call('HINCRBY', batch, 'done', 1)
        local total = tonumber(redis.call('HGET', batch, 'total') or '0')
        if done >= total and redis.call('HEXISTS', batch, 'open') == 0 then
          redis.call('HSET', batch, 'finished_at', now)
          redis.call('RPUSH', KEYS[8], batch_id)
        end
      end
    end
  end
"""

# KEYS[1] the batch hash, KEYS[2] the ended-batches list; ARGV[1] the batch id.
# Closing a batch to new items: if every item it holds has already ended, it ends now.
# Returns 0 when the batch is missing, 1 when closed with items still to end, 2 when it ended.
CLOSE_BATCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HDEL', KEYS[1], 'open') == 0 then return 1 end
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if done < total then return 1 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'finished_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
redis.call('RPUSH', KEYS[2], ARGV[1])
return 2
"""

# KEYS[1] the owner's items-in-flight counter; ARGV[1] items wanted, ARGV[2] the cap,
# ARGV[3] the counter's TTL (s). Reserves atomically, so two racing batches never pass
# the cap together. Returns the new count, or -1 (nothing reserved) when over the cap.
RESERVE_IN_FLIGHT_LUA = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count < 0 then count = 0 end
local wanted = tonumber(ARGV[1])
if count + wanted > tonumber(ARGV[2]) then return -1 end
redis.call('SET', KEYS[1], count + wanted, 'EX', tonumber(ARGV[3]))
return count + wanted
"""
