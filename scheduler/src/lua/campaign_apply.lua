-- KEYS campaign hash, index set; ARGV name, spec JSON, now, author, the
-- location limit the spec was accepted under. Returns {version, changed}.
-- The version, its author and its limit are written in one step.
local latest = tonumber(redis.call('HGET', KEYS[1], 'latest')) or 0
if latest > 0 and redis.call('HEXISTS', KEYS[1], 'deleted_ms') == 0 and redis.call('HGET', KEYS[1], 'v:' .. latest) == ARGV[2] then return {latest, 0} end
latest = latest + 1
redis.call('HSET', KEYS[1], 'latest', latest, 'v:' .. latest, ARGV[2], 'updated_ms', ARGV[3], 'author:' .. latest, ARGV[4], 'max_locations:' .. latest, ARGV[5])
redis.call('HDEL', KEYS[1], 'deleted_ms')
redis.call('SADD', KEYS[2], ARGV[1])
return {latest, 1}
