-- Release a stampede lock if the token still holds it, and tell the waiters why.
--
-- KEYS: 1 lock, 2 the key's failure record
-- ARGV: 1 the holder's token, 2 the key's channel, 3 the message (see locks.py),
--       4 how long the failure record lives, in ms ('' or 0: the message is not a failure),
--       5 the command that publishes it (PUBLISH, or SPUBLISH on a cluster)
-- Returns 1 if the lock was the token's (and is now deleted), else 0
--
-- A failure is also left as a short-lived record, so a waiter that missed the message (its
-- Pub/Sub connection was being re-opened) still gets the holder's error when it finds the lock
-- gone (takeover.lua), instead of calling an upstream that just failed. Only DEL and (S)PUBLISH
-- are needed otherwise: both work when Redis is full, so a holder can always release.
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
local ttl = tonumber(ARGV[4])
if released == 1 and ttl and ttl > 0 then
  redis.pcall('SET', KEYS[2], ARGV[3], 'PX', ttl)  -- pcall: a full Redis refuses it, fine
end
redis.call(ARGV[5], ARGV[2], ARGV[3])
return released
