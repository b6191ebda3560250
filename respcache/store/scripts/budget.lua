-- A workload's budget, checked and spent in one atomic step before a call goes upstream.
--
-- KEYS: 1 the upstream calls of this UTC minute, 2 the upstream tokens of this UTC day
-- ARGV: 1 calls allowed per minute (0: no limit), 2 tokens allowed per day (0: no limit),
--       3 seconds until the minute's counter may go (its TTL)
-- Returns 'day' (the day's tokens are spent: refused), 'minute' (this minute's calls are
-- spent: refused), or 'ok' (allowed; the call is counted in the minute)
--
-- Check-and-increment in one script, so two workers (or machines) can never both take the last
-- call of a minute. A refused call is not counted: it does not go upstream. The day's tokens
-- are only read here; they are added when the upstream has answered (spend_tokens), so the
-- calls in flight when the limit is reached may pass it by their own usage.
local per_minute = tonumber(ARGV[1])
local per_day = tonumber(ARGV[2])
if per_day > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= per_day then
  return 'day'
end
if per_minute > 0 then
  if tonumber(redis.call('GET', KEYS[1]) or '0') >= per_minute then
    return 'minute'
  end
  redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 'ok'
