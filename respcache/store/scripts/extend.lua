-- Renew a stampede lock while its holder's upstream call runs (compare-and-extend, like
-- redis-py's Lock.extend with replace_ttl): only the holder's own token extends it.
--
-- KEYS: 1 lock
-- ARGV: 1 the holder's token, 2 the new TTL in ms
-- Returns 1 if the lock is still the token's (and now lives ARGV[2] ms), else 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
