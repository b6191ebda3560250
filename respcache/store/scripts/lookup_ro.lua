-- The hit path's read when Redis refuses writes (maxmemory reached under noeviction): the same
-- key version and entry as lookup.lua, with no write at all, so a full Redis still serves hits.
-- The caller counts the read as a cache error (the read is not marked in the entry's meta).
--
-- KEYS: 1 version key (as lookup.lua)
-- ARGV: 1 database key version, 2 entry key prefix, 3 the entry's tail ("{<group>}:<fp>"),
--       4 the readable-record header
-- Returns {version, entry or false}
local dbv = tonumber(ARGV[1])
local ver = tonumber(redis.call('GET', KEYS[1]))
if (not ver) or ver < dbv then ver = dbv end
local value = redis.call('GET', ARGV[2] .. ver .. ':' .. ARGV[3])
if value and string.sub(value, 1, #ARGV[4]) ~= ARGV[4] then value = false end
return {ver, value}
