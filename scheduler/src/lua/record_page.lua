-- ARGV location, page, ids (JSON), count, last (0/1).
-- Returns {new, location discovered, every location discovered}: a location
-- whose pages are all in is ready for admission (execution starts while other
-- locations are still being discovered).
local loc, page, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
if redis.call('SADD', applied, 'page:' .. loc .. ':' .. page) == 0 then return {0, 0, 0} end
-- The location's fields in one read and one write (not one command each).
local l = redis.call('HMGET', locstate, loc .. ':failed', loc .. ':closed',
  loc .. ':targets', loc .. ':pages_seen', loc .. ':pages')
if l[1] or l[2] then return {1, 0, 0} end
if n > 0 then redis.call('HSET', pages, loc .. ':' .. page, ARGV[3]) end
local seen = (tonumber(l[4]) or 0) + 1
local expected = tonumber(l[5])
if ARGV[5] == '1' then expected = page + 1 end
local fields = {loc .. ':targets', (tonumber(l[3]) or 0) + n, loc .. ':pages_seen', seen}
if ARGV[5] == '1' then
  fields[5], fields[6] = loc .. ':pages', expected
end
redis.call('HSET', locstate, unpack(fields))
redis.call('HINCRBY', run, F.total, n)
if expected and seen == expected then
  redis.call('SREM', discovering, loc)
  redis.call('RPUSH', ready, loc)
  if location_discovered() then return {1, 1, 1} end
  return {1, 1, 0}
end
return {1, 0, 0}
