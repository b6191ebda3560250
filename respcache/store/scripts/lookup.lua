-- The hit path's one round trip: resolve the workload's key version, GET the entry, mark its read.
--
-- KEYS: 1 the version key (on a cluster, the copy of the entry's group: it shares the entry's
--       hash tag, so every key this script touches is in one slot)
-- ARGV: 1 database key version, 2 entry key prefix, 3 meta key prefix, 4 the entry's tail
--       (keys.entry_tail: "{<group>}:<fingerprint>"), 5 '1' to mark a read in the entry's meta
--       hash ('' = resolve and read only), 6 '1' to mark only (the caller holds the entry
--       already: it is not read), 7-11 field names (store/fields.py LOOKUP_FIELDS: the meta
--       hash's in, out, expiry minute and hour bucket keys and read counter), 12 the header
--       every readable record starts with (store/records.py: magic and schema)
-- Returns {version, entry or false, meta hash found (0/1), saved input, saved output tokens,
--          first read (0/1), expiry minute bucket key, expiry hour bucket key}
--
-- Counters are not touched here: the caller adds them up in its process (tally.py), which
-- flushes them once a second. The expiry buckets are returned for the first read to count.
local dbv = tonumber(ARGV[1])
local ver = tonumber(redis.call('GET', KEYS[1]))
if (not ver) or ver < dbv then
  redis.call('SET', KEYS[1], dbv)
  ver = dbv
end
local suffix = ver .. ':' .. ARGV[4]
local value = false
if ARGV[6] ~= '1' then
  value = redis.call('GET', ARGV[2] .. suffix)
  -- A record of another schema (an older or newer release wrote it) is a miss, not counted.
  if value and string.sub(value, 1, #ARGV[12]) ~= ARGV[12] then value = false end
  if (not value) or ARGV[5] == '' then return {ver, value} end
end
local f_in, f_out, f_xm, f_xh, f_reads = unpack(ARGV, 7, 11)
local mkey = ARGV[3] .. suffix
local m = redis.call('HMGET', mkey, f_in, f_out, f_xm, f_xh)
if not m[1] then return {ver, value, 0, 0, 0, 0} end
local first = 0
if redis.call('HINCRBY', mkey, f_reads, 1) == 1 then first = 1 end
return {ver, value, 1, tonumber(m[1]) or 0, tonumber(m[2]) or 0, first, m[3] or '', m[4] or ''}
