-- A write's one round trip: store the record, its meta hash and its notes, index the request by
-- its shape,
-- count it, release the writer's lock if it still holds it, and wake the waiters.
--
-- KEYS: entry, meta, lock, minute bucket, hour bucket, expiry minute bucket, expiry hour bucket,
--       all-time totals, shape index ('' = none: nothing indexed), notes
-- ARGV: 1 record, 2 ttl ms, 3 lock token ('' = none), 4 input tokens, 5 output tokens,
--       6 stored at, 7 size, 8 model, 9 channel, 10 minute ttl, 11 hour ttl, 12 expiry minute
--       ttl, 13 expiry hour ttl, 14 the message that wakes the waiters (records.ok_message),
--       15-24 field names (store/fields.py WRITE_FIELDS: the meta hash's reads, in, out,
--       stored_at, size, model, expiry minute and hour bucket keys; the written and
--       exp_written counters), 25 the notes (records.encode_notes; '' = none), 26 the shape
--       index item, 27 how many items the shape index keeps, then counter fields and values to
--       add to the current buckets and the totals (the call that produced the answer)
-- Returns 1 if the lock was still ours (and is now deleted), else 0
local f_reads, f_in, f_out, f_stored_at, f_size, f_model, f_xm, f_xh, f_written, f_exp_written =
  unpack(ARGV, 15, 24)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], f_reads, 0, f_in, ARGV[4], f_out, ARGV[5], f_stored_at, ARGV[6],
           f_size, ARGV[7], f_model, ARGV[8], f_xm, KEYS[6], f_xh, KEYS[7])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if KEYS[10] ~= '' then
  if ARGV[25] ~= '' then
    redis.call('SET', KEYS[10], ARGV[25], 'PX', ARGV[2])
  else
    redis.call('DEL', KEYS[10])
  end
end
if KEYS[9] ~= '' and ARGV[26] ~= '' then
  redis.call('LPUSH', KEYS[9], ARGV[26])
  redis.call('LTRIM', KEYS[9], 0, tonumber(ARGV[27]) - 1)
  redis.call('PEXPIRE', KEYS[9], ARGV[2])
end
redis.call('HINCRBY', KEYS[4], f_written, 1)
redis.call('EXPIRE', KEYS[4], ARGV[10])
redis.call('HINCRBY', KEYS[5], f_written, 1)
redis.call('EXPIRE', KEYS[5], ARGV[11])
redis.call('HINCRBY', KEYS[6], f_exp_written, 1)
redis.call('EXPIRE', KEYS[6], ARGV[12])
redis.call('HINCRBY', KEYS[7], f_exp_written, 1)
redis.call('EXPIRE', KEYS[7], ARGV[13])
redis.call('HINCRBY', KEYS[8], f_written, 1)
for j = 28, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[4], ARGV[j], ARGV[j + 1])
  redis.call('HINCRBY', KEYS[5], ARGV[j], ARGV[j + 1])
  redis.call('HINCRBY', KEYS[8], ARGV[j], ARGV[j + 1])
end
local released = 0
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
  released = 1
end
redis.call('PUBLISH', ARGV[9], ARGV[14])
return released
