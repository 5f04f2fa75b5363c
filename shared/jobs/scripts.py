"""The Lua scripts behind JobStore: creating a job and changing its status, each atomic in Redis.

Kept apart from :mod:`shared.jobs.store` because they are a second language with their own
key/argument contract; the comment above each script is that contract.
"""

from __future__ import annotations

from shared.batches.counts import BATCH_COUNTS_LUA

# KEYS[1] job hash, KEYS[2] events channel, KEYS[3] the job counts hash, KEYS[4] the queued-jobs set,
# KEYS[5] queued jobs per owner, KEYS[6] pending upload bytes per owner (hashes, see CREATE_LUA),
# KEYS[7] the batch hashes' name prefix, KEYS[8] the ended-batches list and KEYS[9] the list of results
# chunks to compact (BATCH_COUNTS_LUA: an item's batch).
# ARGV[1] comma-separated statuses the job must be in ("" = any), ARGV[2] the new
# status JSON-encoded ("" = leave it), ARGV[3] the job id, ARGV[4..] field/value pairs (JSON values).
# Moving to running counts a delivery in `attempts`, which the poison-job guard reads.
# A move to a final status is published on KEYS[2]; moves to queued or running are not, as nobody
# waits for them (each PUBLISH cost Redis and every API process's listener a message per job).
# The counts (`entered:<status>`, `current:<status>`, `redelivered`) change in the same
# script, so the API's /metrics never sees a job counted in two states; a job that leaves
# `queued` leaves the set the orphan sweeper reads (worker.recovery.redelivery). A job admitted against
# its owner's shares gives them back here: its queue slot when it leaves `queued`, its upload
# bytes when it ends; the markers are deleted so nothing is given back twice.
TRANSITION_LUA = (
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
  -- Only an end is published: the API's long-polls wait for nothing else (api/jobs/events.py).
  if ARGV[2] ~= '"queued"' and ARGV[2] ~= '"running"' then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
end
return 1
"""
)

# KEYS[1] job hash, KEYS[2] upload, KEYS[3] job counts, KEYS[4] queued-jobs set, KEYS[5] queued jobs
# per owner, KEYS[6] pending upload bytes per owner ('*' holds the total). ARGV[1] job TTL s,
# ARGV[2] upload TTL s, ARGV[3] owner, ARGV[4] status, ARGV[5] job id, ARGV[6] queued-at (epoch s),
# ARGV[7] the upload ('' = none), ARGV[8] most queued jobs per owner, ARGV[9] most upload bytes per
# owner, ARGV[10] most upload bytes in all (0 = no limit), ARGV[11] most tasks waiting in the caption
# queue KEYS[8] (0 = no limit), ARGV[12..] field/value pairs (JSON values).
# KEYS[7] the owner's job index (sorted set, score: created at).
# Returns {0} when stored, else {1|2|3|4, what the owner or everyone holds}: 1 the owner's queue share,
# 2 its upload share, 3 the total upload budget, 4 the caption queue's depth (tasks waiting). Checking
# and counting in one script means concurrent requests of one key can never pass its share together,
# and the queue check costs no round trip of its own.
CREATE_LUA = """
local max_waiting = tonumber(ARGV[11])
if max_waiting > 0 then
  local waiting = redis.call('LLEN', KEYS[8])
  if waiting >= max_waiting then return {4, waiting} end
end
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
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
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
