-- transition.lua: the one writer of a job's `status` (shared.jobs.store.JobStore.transition).
--
-- KEYS[1] the job hash        KEYS[2] its events channel   KEYS[3] the job counts hash
-- KEYS[4] the queued-jobs set (the orphan sweep reads it)
-- KEYS[5] queued jobs per owner (hash)   KEYS[6] pending upload bytes per owner (hash; '*' holds the total)
-- KEYS[7] the batch hashes' name prefix  KEYS[8] the ended-batches list  KEYS[9] the ended results segments list
-- ARGV[1] comma-separated statuses the job must be in ('' = any)
-- ARGV[2] the new status, JSON-encoded ('' = leave it: a plain field update)
-- ARGV[3] the job id         ARGV[4..] field/value pairs (JSON values)
-- Returns 1 when the job changed, 0 when it is missing or in none of ARGV[1] (a duplicate delivery).
--
-- Moving to running counts a delivery in `attempts`, which the poison-job guard reads. A move to a
-- final status is published on KEYS[2]; moves to queued or running are not, as nobody waits for them.
-- The counts (`entered:<status>`, `current:<status>`, `redelivered`) change in the same script, so
-- /metrics never sees a job counted in two states. A job admitted against its owner's shares gives
-- them back here: its queue slot when it leaves `queued`, its upload bytes when it ends; the markers
-- are deleted so nothing is given back twice. A batch item's batch counts change here too, in the
-- same atomic step (no second script could be crashed between).

-- Items per results segment: shared.batches.results.RESULTS_CHUNK_ITEMS (a unit test keeps them equal).
local RESULTS_CHUNK_ITEMS = 500

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

  -- A batch item's batch: its counts change in this same atomic step, whichever process moved the item.
  -- A batch ends when every item it holds has ended and no more are coming (no `open` field): the item
  -- that ends last pushes the batch id for the API to close; an item ending as a cache hit counts in
-- `cache_hits`. `inflight_key` is the owner's items-in-flight
  -- counter, which create.lua raised. Each results segment's ended items are counted (`e:<segment>`); the
  -- item that ends a segment's last lists `<batch_id>:<segment>` for compaction (shared/batches/item_results.py).
  local batch_field = redis.call('HGET', KEYS[1], 'batch_id')
  if batch_field and batch_field ~= 'null' and current ~= ARGV[2] then
    local batch_id = string.sub(batch_field, 2, -2)
    local batch = KEYS[7] .. batch_id
    if redis.call('EXISTS', batch) == 1 then
      local final = {succeeded=true, failed=true, canceled=true, expired=true}
      local to = string.sub(ARGV[2], 2, -2)
      local from = current and string.sub(current, 2, -2) or ''
      redis.call('HINCRBY', batch, 'n:' .. to, 1)
      if current then redis.call('HINCRBY', batch, 'n:' .. from, -1) end
      local t = redis.call('TIME')
      local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
      -- A batch starts when a worker takes its first item: to running, or ended from queued as a cache hit.
      local hit = redis.call('HGET', KEYS[1], 'cache') == '"hit"'
      if to == 'running' or (from == 'queued' and hit) then redis.call('HSETNX', batch, 'started_at', now) end
      if final[to] and not final[from] then
        -- The worker writes `cache` in this same transition: a cache hit is counted as the item ends.
        if hit then redis.call('HINCRBY', batch, 'cache_hits', 1) end
        local in_flight = redis.call('HGET', batch, 'inflight_key')
        if in_flight then redis.call('DECR', in_flight) end
        local index = tonumber(string.match(ARGV[3], '_(%d+)$'))
        if index then
          local segment = math.floor(index / RESULTS_CHUNK_ITEMS)
          if redis.call('HINCRBY', batch, 'e:' .. segment, 1) == RESULTS_CHUNK_ITEMS then
            redis.call('HDEL', batch, 'e:' .. segment)
            redis.call('RPUSH', KEYS[9], batch_id .. ':' .. segment)
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

  -- Only an end is published: the API's long-polls wait for nothing else (api/jobs/events.py).
  if ARGV[2] ~= '"queued"' and ARGV[2] ~= '"running"' then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
end
return 1
