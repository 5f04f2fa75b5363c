-- Store one entry, keep the cache within its bound, and end the storing job's lease.
-- Redis runs noeviction (the queue must never lose a message), so the cache evicts itself:
-- past ARGV[4] members in the LRU set, the least recently used entries are deleted here.
--
-- KEYS[1] the LRU sorted set (member: digest, score: last use in epoch ms)
-- KEYS[2] the stats hash (evictions)
-- KEYS[3] the entry
-- KEYS[4] the entry's lease
-- ARGV[1] the entry's value ('C' or 'E' then JSON)
-- ARGV[2] the entry's TTL, s
-- ARGV[3] now, epoch ms
-- ARGV[4] most entries (cache_max_entries)
-- ARGV[5] the entry's digest (its LRU member)
-- ARGV[6] the storing job's id: the lease is deleted only if that job still holds it
-- ARGV[7] the entry keys' prefix (evicted entries are named from their digests)
-- ARGV[8] the longest entry TTL, s (cache_ttl_s): members unused that long name expired entries
--
-- Returns how many entries were evicted.
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[5])
-- Expired, not evicted: a member unused for the longest TTL names an entry Redis already deleted.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]) - 1000 * tonumber(ARGV[8]))
local evicted = 0
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[1], excess)
  for j = 1, #oldest, 2 do evicted = evicted + redis.call('DEL', ARGV[7] .. oldest[j]) end
  if evicted > 0 then redis.call('HINCRBY', KEYS[2], 'evictions', evicted) end
end
if redis.call('GET', KEYS[4]) == ARGV[6] then redis.call('DEL', KEYS[4]) end
return evicted
