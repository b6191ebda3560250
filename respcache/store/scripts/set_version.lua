-- Raise a workload's key version in Redis, never lower it.
--
-- KEYS: version key
-- ARGV: 1 the version
local v = tonumber(redis.call('GET', KEYS[1]))
if (not v) or v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
