-- ARGV location, page, ids (JSON), count, last (0/1).
-- Returns {new, location discovered, every location discovered}: a location
-- whose pages are all in is ready for admission (execution starts while other
-- locations are still being discovered).
local loc, page, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
if redis.call('SADD', applied, 'page:' .. loc .. ':' .. page) == 0 then return {0, 0, 0} end
local ended = redis.call('HMGET', locstate, loc .. ':failed', loc .. ':closed')
if ended[1] or ended[2] then return {1, 0, 0} end
if n > 0 then redis.call('HSET', pages, loc .. ':' .. page, ARGV[3]) end
redis.call('HINCRBY', locstate, loc .. ':targets', n)
redis.call('HINCRBY', run, F.total, n)
local seen = redis.call('HINCRBY', locstate, loc .. ':pages_seen', 1)
if ARGV[5] == '1' then redis.call('HSET', locstate, loc .. ':pages', page + 1) end
local expected = tonumber(redis.call('HGET', locstate, loc .. ':pages'))
if expected and seen == expected then
  redis.call('SREM', discovering, loc)
  redis.call('RPUSH', ready, loc)
  if location_discovered() then return {1, 1, 1} end
  return {1, 1, 0}
end
return {1, 0, 0}
