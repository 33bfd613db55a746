-- ARGV location, reason. Returns {new, discovery complete}.
local loc = ARGV[1]
if redis.call('SADD', applied, 'failed:' .. loc) == 0 then return {0, 0} end
local expected = tonumber(redis.call('HGET', locstate, loc .. ':pages'))
local seen = tonumber(redis.call('HGET', locstate, loc .. ':pages_seen')) or 0
local was_discovered = expected and seen == expected
redis.call('HSET', locstate, loc .. ':failed', ARGV[2])
local failed = redis.call('HINCRBY', run, 'failed_locations', 1)
local allowed = tonumber(redis.call('HGET', run, 'allowed_location_errors'))
if failed > allowed then
  halt('location_max_errors exceeded: ' .. failed .. ' locations failed, ' .. allowed ..
       ' allowed (latest ' .. loc .. ': ' .. ARGV[2] .. ')')
end
if not was_discovered and location_discovered() then return {1, 1} end
return {1, 0}
