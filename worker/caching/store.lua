-- Write cache entries and fresh URLs' links, keep the cache within its bound, and end the storing job's lease.
-- Redis runs noeviction (the queue must never lose a message), so the cache evicts itself:
-- past ARGV[2] members in the LRU set, the least recently used entries and links are deleted here.
--
-- KEYS[1]     the LRU sorted set (member: an entry's digest or a link's 'u:' digest, score: last use, epoch ms)
-- KEYS[2]     the stats hash (evictions)
-- KEYS[3]     the storing job's lease: deleted only if that job still holds it
-- KEYS[3 + i] write i's key (an entry, or a link: both named ARGV[3] .. member)
-- ARGV[1]     now, epoch ms
-- ARGV[2]     most entries and links together (cache_max_entries)
-- ARGV[3]     the entry keys' prefix (evicted ones are named from their members)
-- ARGV[4]     the longest entry TTL, s (cache_ttl_s): members unused that long name expired keys
-- ARGV[5]     the storing job's id, or '' when no lease ends (a link written on a hit)
-- ARGV[3 + 3i], ARGV[4 + 3i], ARGV[5 + 3i]   write i's value, TTL in ms, LRU member
--
-- Returns how many entries and links were evicted.
for i = 1, #KEYS - 3 do
  redis.call('SET', KEYS[3 + i], ARGV[3 + 3 * i], 'PX', ARGV[4 + 3 * i])
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5 + 3 * i])
end
-- Expired, not evicted: a member unused for the longest TTL names a key Redis already deleted.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - 1000 * tonumber(ARGV[4]))
local evicted = 0
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if excess > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[1], excess)
  for j = 1, #oldest, 2 do evicted = evicted + redis.call('DEL', ARGV[3] .. oldest[j]) end
  if evicted > 0 then redis.call('HINCRBY', KEYS[2], 'evictions', evicted) end
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
return evicted
