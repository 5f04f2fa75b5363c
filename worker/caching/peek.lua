-- Answer repeats of fresh URLs without their download: for each URL's link, the entry it names,
-- when both still exist (many at once: one call per turn of the worker's event loop).
--
-- KEYS[1]     the LRU sorted set (member: digest, score: last use in epoch ms)
-- KEYS[2]     the stats hash (hits, fresh_url_hits)
-- KEYS[2 + i] link i (value: the digest of its entry)
-- ARGV[1]     now, epoch ms
-- ARGV[2]     entry TTL, s: a caption entry's TTL starts again on each hit (a link's never: the server set it)
-- ARGV[3]     the entry keys' prefix
-- ARGV[3 + i] link i's LRU member
--
-- Returns one reply per link: the entry's value (a hit: 'C' or 'E' then JSON), or '' (no link, or its
-- entry is gone: the job downloads its image and claims as usual, which counts the miss).
local replies = {}
for i = 1, #KEYS - 2 do
  local digest = redis.call('GET', KEYS[2 + i])
  local value = digest and redis.call('GET', ARGV[3] .. digest)
  if value then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], digest, ARGV[1], ARGV[3 + i])
    if string.sub(value, 1, 1) == 'C' then redis.call('EXPIRE', ARGV[3] .. digest, ARGV[2]) end
    redis.call('HINCRBY', KEYS[2], 'hits', 1)
    redis.call('HINCRBY', KEYS[2], 'fresh_url_hits', 1)
    replies[i] = value
  else
    replies[i] = ''
  end
end
return replies
