-- Release a stampede lock if the token still holds it, and tell the waiters why.
--
-- KEYS: lock
-- ARGV: 1 the holder's token, 2 the key's channel, 3 the message (see locks.py)
-- Returns 1 if the lock was the token's (and is now deleted), else 0
local released = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return released
