-- The hit path's one round trip: resolve the workload's key version, GET the entry, count.
--
-- KEYS: version key, minute stats bucket, hour stats bucket, all-time totals
-- ARGV: 1 database key version, 2 entry key prefix, 3 meta key prefix, 4 fingerprint,
--       5 outcome (the counter to add 1 to; '' = count nothing), 6 minute bucket ttl,
--       7 hour bucket ttl, 8 '1' to count only (the caller holds the entry already: it is
--       not read), 9-17 field names (store/fields.py LOOKUP_FIELDS: the meta hash's in, out,
--       expiry minute and hour bucket keys and read counter; the exp_read, first_read,
--       saved_in and saved_out counters), 18 the header every readable record starts with
--       (store/records.py: magic and schema), then extra counter fields and values to add
--       with the outcome
-- Returns {version, entry or false, meta hash found (0/1), saved input, saved output tokens}
--
-- A bucket's EXPIRE is set when a field is new in it: every script that creates a bucket does
-- so, and the deadline is absolute (bucket end + retention), so one EXPIRE per field suffices.
-- Keys are the prefixes plus "<version>:<fingerprint>", as keys.entry_key builds them.
local dbv = tonumber(ARGV[1])
local ver = tonumber(redis.call('GET', KEYS[1]))
if (not ver) or ver < dbv then
  redis.call('SET', KEYS[1], dbv)
  ver = dbv
end
local suffix = ver .. ':' .. ARGV[4]
local value = false
if ARGV[8] ~= '1' then
  value = redis.call('GET', ARGV[2] .. suffix)
  -- A record of another schema (an older or newer release wrote it) is a miss, not counted.
  if value and string.sub(value, 1, #ARGV[18]) ~= ARGV[18] then value = false end
  if (not value) or ARGV[5] == '' then return {ver, value} end
end
local f_in, f_out, f_xm, f_xh, f_reads, f_exp_read, f_first_read, f_saved_in, f_saved_out =
  unpack(ARGV, 9, 17)
local mkey = ARGV[3] .. suffix
local saved_in, saved_out, known = 0, 0, 0
local m = redis.call('HMGET', mkey, f_in, f_out, f_xm, f_xh)
if m[1] then
  known = 1
  saved_in = tonumber(m[1]) or 0
  saved_out = tonumber(m[2]) or 0
  if redis.call('HINCRBY', mkey, f_reads, 1) == 1 then
    if m[3] then redis.call('HINCRBY', m[3], f_exp_read, 1) end
    if m[4] then redis.call('HINCRBY', m[4], f_exp_read, 1) end
    redis.call('HINCRBY', KEYS[4], f_first_read, 1)
  end
end
for i = 2, 4 do
  if redis.call('HINCRBY', KEYS[i], ARGV[5], 1) == 1 and i < 4 then
    redis.call('EXPIRE', KEYS[i], ARGV[4 + i])
  end
  if saved_in ~= 0 then redis.call('HINCRBY', KEYS[i], f_saved_in, saved_in) end
  if saved_out ~= 0 then redis.call('HINCRBY', KEYS[i], f_saved_out, saved_out) end
  for j = 19, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[i], ARGV[j], ARGV[j + 1])
  end
end
return {ver, value, known, saved_in, saved_out}
