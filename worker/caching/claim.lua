-- Claim cache keys for jobs, many at once (one call per turn of the worker's event loop).
-- A key with an entry is a hit; a key nobody computes is leased to the job (a miss: it computes);
-- a key leased to another job is answered 'W' (the job waits, then claims again).
--
-- KEYS[1]      the LRU sorted set (member: digest, score: last use in epoch ms)
-- KEYS[2]      the stats hash (hits, misses, deduplicated)
-- KEYS[1 + 2i] claim i's entry (i from 1)
-- KEYS[2 + 2i] claim i's lease
-- ARGV[1]      now, epoch ms
-- ARGV[2]      lease length, ms
-- ARGV[3]      entry TTL, s: a caption entry's TTL starts again on each hit
-- ARGV[1 + 3i] claim i's digest (its LRU member)
-- ARGV[2 + 3i] claim i's job id (the lease's value)
-- ARGV[3 + 3i] '1' when claim i's job already waited for the key (a hit then counts as deduplicated)
--
-- Returns one reply per claim: the entry's value (a hit: 'C' or 'E' then JSON), 'L' (leased to
-- this job, which may hold it already: a redelivery) or 'W' (leased to another job).
local replies = {}
for i = 1, (#KEYS - 2) / 2 do
  local entry, lease = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local digest, job, waited = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  local value = redis.call('GET', entry)
  if value then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], digest)
    if string.sub(value, 1, 1) == 'C' then redis.call('EXPIRE', entry, ARGV[3]) end
    redis.call('HINCRBY', KEYS[2], 'hits', 1)
    if waited == '1' then redis.call('HINCRBY', KEYS[2], 'deduplicated', 1) end
    replies[i] = value
  elseif redis.call('SET', lease, job, 'NX', 'PX', ARGV[2]) or redis.call('GET', lease) == job then
    redis.call('PEXPIRE', lease, ARGV[2])
    redis.call('HINCRBY', KEYS[2], 'misses', 1)
    replies[i] = 'L'
  else
    replies[i] = 'W'
  end
end
return replies
