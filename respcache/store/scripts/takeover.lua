-- A waiter's look at its key, in one atomic step: is the answer there, is the holder alive,
-- did it fail, or is the lock free (then the waiter takes it)?
--
-- KEYS: 1 entry, 2 lock, 3 the key's failure record (release.lua)
-- ARGV: 1 the waiter's token, 2 lock TTL in ms
-- Returns {'entry'} (read it), {'held'} (keep waiting), {'failed', message} (the holder's
-- error), or {'acquired'} (the waiter now holds the lock)
--
-- No timing guess: a holder that failed left its record before it let the lock go, so a waiter
-- that finds the lock free either sees that failure or is right to call the upstream itself.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'entry'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'held'} end
local failure = redis.call('GET', KEYS[3])
if failure then return {'failed', failure} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'acquired'}
