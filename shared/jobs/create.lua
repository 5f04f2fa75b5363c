-- create.lua: the one script that creates jobs, for every door (a single job, each item of a batch).
--
-- All the jobs of one request are created together or not at all, and each quota of their owner is
-- checked and counted in this same atomic step, so concurrent requests of one key can never pass a
-- share together, and a request refused for a quota leaves nothing stored.
--
-- KEYS[1] the job counts hash            KEYS[2] the queued-jobs set (orphan sweep)
-- KEYS[3] queued jobs per owner (hash)   KEYS[4] pending upload bytes per owner (hash; '*' holds the total)
-- KEYS[5] the owner's job index (sorted set, score: created at)
-- KEYS[6] the caption queue (a list: its length is the tasks waiting)
-- KEYS[7] the owner's items-in-flight counter
-- KEYS[8 + 2(i-1)] job i's hash, KEYS[9 + 2(i-1)] job i's upload
-- ARGV[1] job TTL s              ARGV[2] upload TTL s        ARGV[3] owner
-- ARGV[4] most queued jobs per owner (0: these jobs do not count on the queue share)
-- ARGV[5] most upload bytes per owner   ARGV[6] most upload bytes in all (0: no limit)
-- ARGV[7] most tasks waiting in the caption queue (0: no limit)
-- ARGV[8] most items in flight per owner (0: these jobs do not count as items in flight)
-- ARGV[9] 1: list the jobs in the owner's job index (GET /v1/jobs); 0: not (a batch's items)
-- ARGV[10] the jobs' count n, then per job: id, status, created-at (epoch s), upload ('' = none),
--         the number of field/value pairs m, then m field/value pairs (JSON values).
-- Returns {0, 0} when stored, else {reason, what the owner or everyone holds}: 1 the owner's queue
-- share, 2 its upload share, 3 the total upload budget, 4 the caption queue's depth, 5 the owner's
-- items in flight.
local max_queued, max_owner_bytes, max_bytes = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local max_waiting, max_in_flight, n = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[10])
local indexed = ARGV[9] == '1'

-- First pass: where each job's arguments start, how many wait in `queued`, their upload bytes.
local starts, queued, upload_bytes = {}, 0, 0
local at = 11
for i = 1, n do
  starts[i] = at
  if ARGV[at + 1] == 'queued' then queued = queued + 1 end
  upload_bytes = upload_bytes + string.len(ARGV[at + 3])
  at = at + 5 + 2 * tonumber(ARGV[at + 4])
end

if max_waiting > 0 and queued > 0 then
  local waiting = redis.call('LLEN', KEYS[6])
  if waiting >= max_waiting then return {4, waiting} end
end
local limited = max_queued > 0 or max_owner_bytes > 0 or max_bytes > 0
if max_queued > 0 and queued > 0 then
  local held = tonumber(redis.call('HGET', KEYS[3], ARGV[3]) or '0')
  if held + queued > max_queued then return {1, held} end
end
if limited and upload_bytes > 0 then
  local held = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')
  if max_owner_bytes > 0 and held + upload_bytes > max_owner_bytes then return {2, held} end
  local total = tonumber(redis.call('HGET', KEYS[4], '*') or '0')
  if max_bytes > 0 and total + upload_bytes > max_bytes then return {3, total} end
end
if max_in_flight > 0 then
  local held = math.max(0, tonumber(redis.call('GET', KEYS[7]) or '0'))
  if held + n > max_in_flight then return {5, held} end
  redis.call('SET', KEYS[7], held + n, 'EX', ARGV[1])
end

-- Second pass: write every job.
local newest = 0
for i = 1, n do
  local s = starts[i]
  local job, upload = KEYS[6 + 2 * i], KEYS[7 + 2 * i]
  local id, status, created, data = ARGV[s], ARGV[s + 1], tonumber(ARGV[s + 2]), ARGV[s + 3]
  local m = tonumber(ARGV[s + 4])
  redis.call('HSET', job, unpack(ARGV, s + 5, s + 4 + 2 * m))
  redis.call('EXPIRE', job, ARGV[1])
  if string.len(data) > 0 then
    redis.call('SET', upload, data, 'EX', ARGV[2])
    if limited then
      redis.call('HSET', job, 'share_upload_bytes', string.len(data))
    end
  end
  redis.call('HINCRBY', KEYS[1], 'entered:' .. status, 1)
  redis.call('HINCRBY', KEYS[1], 'current:' .. status, 1)
  if status == 'queued' then
    redis.call('ZADD', KEYS[2], created, id)
    if max_queued > 0 then redis.call('HSET', job, 'share_queued', '1') end
  end
  if indexed then redis.call('ZADD', KEYS[5], created, id) end
  if created > newest then newest = created end
end
if max_queued > 0 and queued > 0 then redis.call('HINCRBY', KEYS[3], ARGV[3], queued) end
if limited and upload_bytes > 0 then
  redis.call('HINCRBY', KEYS[4], ARGV[3], upload_bytes)
  redis.call('HINCRBY', KEYS[4], '*', upload_bytes)
end
if indexed then
  -- The owner's newest-first index (GET /v1/jobs); entries older than any record go in the same breath.
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', newest - tonumber(ARGV[1]))
  redis.call('EXPIRE', KEYS[5], ARGV[1])
end
return {0, 0}
