-- A write's one round trip: store the record, its meta hash and its notes, release the
-- writer's lock if it still holds it, and wake the waiters.
--
-- KEYS: entry, meta, lock, notes (left out: none); all one entry's names, so one slot on a cluster
-- ARGV: 1 record, 2 ttl ms, 3 lock token ('' = none), 4 input tokens, 5 output tokens,
--       6 stored at, 7 size, 8 model, 9 channel, 10 the message that wakes the waiters
--       (records.ok_message), 11 the command that publishes it (PUBLISH, or SPUBLISH on a
--       cluster), 12-19 field names (store/fields.py WRITE_FIELDS: the meta hash's reads, in,
--       out, stored_at, size, model, expiry minute and hour bucket keys), 20 the notes
--       (records.encode_notes; '' = none), 21 the expiry minute bucket key, 22 the expiry hour
--       bucket key (kept in the meta hash: the first read counts exp_read there)
-- Returns 1 if the lock was still ours (and is now deleted), else 0
--
-- Counters are not touched here (tally.py); the shape index is pushed beside this script, as
-- it lives in a slot of its own.
local f_reads, f_in, f_out, f_stored_at, f_size, f_model, f_xm, f_xh = unpack(ARGV, 12, 19)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], f_reads, 0, f_in, ARGV[4], f_out, ARGV[5], f_stored_at, ARGV[6],
           f_size, ARGV[7], f_model, ARGV[8], f_xm, ARGV[21], f_xh, ARGV[22])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if KEYS[4] then
  if ARGV[20] ~= '' then
    redis.call('SET', KEYS[4], ARGV[20], 'PX', ARGV[2])
  else
    redis.call('DEL', KEYS[4])
  end
end
local released = 0
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
  released = 1
end
redis.call(ARGV[11], ARGV[9], ARGV[10])
return released
