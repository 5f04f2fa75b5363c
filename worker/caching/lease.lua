-- Renew or end leases, each only while its job still holds it (a lapsed lease may be another job's now).
--
-- KEYS[i]     lease i
-- ARGV[1]     new length in ms, or '0' to end the leases
-- ARGV[1 + i] the job id lease i must hold
--
-- Returns how many leases were renewed or ended.
local changed = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1 + i] then
    if ARGV[1] == '0' then
      redis.call('DEL', KEYS[i])
    else
      redis.call('PEXPIRE', KEYS[i], ARGV[1])
    end
    changed = changed + 1
  end
end
return changed
