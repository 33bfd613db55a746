-- ARGV window, chunk. Opens the discovery of the run's next locations, in the
-- order of its location list, so that at most `window` are being discovered
-- at once: Discover jobs never pile up in front of the Execute jobs of the
-- locations already discovered. Returns the opened locations' indexes in the
-- list (the caller publishes their Discover jobs). Opens nothing while the
-- room is less than `chunk` and more locations than that are left, so jobs
-- are published (and confirmed) in chunks, not one by one.
local window, chunk = tonumber(ARGV[1]), tonumber(ARGV[2])
local r = run_fields(F.discover_next, F.location_count)
local next = tonumber(r[F.discover_next]) or 0
local left = tonumber(r[F.location_count]) - next
local room = math.min(window - redis.call('SCARD', discovering), left)
if room <= 0 or (room < chunk and room < left) then return {} end
local opened = {}
for i, loc in ipairs(redis.call('LRANGE', locations, next, next + room - 1)) do
  redis.call('SADD', discovering, loc)
  opened[i] = next + i - 1
end
redis.call('HSET', run, F.discover_next, next + #opened)
return opened
