-- ARGV location, reason, run-wide ('1': the step itself was refused, every
-- location would fail alike: the run halts with the reason). Returns {new,
-- every location discovered}.
-- A location that fails before its discovery ended is never ready, so it is
-- done now; one that is ready or active finishes through admission or its
-- batches.
local loc = ARGV[1]
-- A refused step halts the run even where the location failed before.
if ARGV[3] == '1' then halt(ARGV[2]) end
if redis.call('SADD', applied, 'failed:' .. loc) == 0 then return {0, 0} end
local expected = tonumber(redis.call('HGET', locstate, loc .. ':pages'))
local seen = tonumber(redis.call('HGET', locstate, loc .. ':pages_seen')) or 0
local was_discovered = expected and seen == expected
redis.call('HSET', locstate, loc .. ':failed', ARGV[2])
redis.call('SREM', discovering, loc)
local failed = redis.call('HINCRBY', run, F.failed_locations, 1)
local allowed = tonumber(redis.call('HGET', run, F.allowed_location_errors))
if failed > allowed then
  halt('location_max_errors exceeded: ' .. failed .. ' locations failed, ' .. allowed ..
       ' allowed (latest ' .. loc .. ': ' .. ARGV[2] .. ')')
end
if not was_discovered then
  redis.call('HINCRBY', run, F.locations_done, 1)
  if location_discovered() then return {1, 1} end
end
return {1, 0}
