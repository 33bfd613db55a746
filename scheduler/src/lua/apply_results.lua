-- ARGV entry key, location, targets, failures, counters (JSON), next entry or '',
-- the most fields the counters hash takes new failure causes up to.
-- Returns {new, state}.
local r = run_fields(F.state, F.in_flight, F.allowed_errors)
local state = r[F.state]
if redis.call('SADD', applied, 'results:' .. ARGV[1]) == 0 then
  return {0, state}
end
-- Per-target windows: the next step stays in the batch's window.
local window = nil
local was = redis.call('HGET', admitted, ARGV[1])
if was and string.find(was, '"w":', 1, true) then window = cjson.decode(was).w end
redis.call('HDEL', admitted, ARGV[1])
local in_flight = (tonumber(r[F.in_flight]) or 0) - tonumber(ARGV[3])
redis.call('HSET', run, F.in_flight, math.max(0, in_flight))
for field, n in pairs(cjson.decode(ARGV[5])) do
  -- Failure causes (`f:step:status:cause`) are bounded a run: past the cap a
  -- new cause counts as `f:step:status:other`.
  if string.sub(field, 1, 2) == 'f:' and redis.call('HEXISTS', counters, field) == 0
      and redis.call('HLEN', counters) >= tonumber(ARGV[7]) then
    field = string.match(field, '^(f:[^:]*:[^:]*:)') .. 'other'
  end
  redis.call('HINCRBY', counters, field, n)
end
local failed = tonumber(ARGV[4])
-- Per location, for the console's grid: results in and targets failed.
redis.call('HINCRBY', locstate, ARGV[2] .. ':results', tonumber(ARGV[3]))
if failed > 0 then redis.call('HINCRBY', locstate, ARGV[2] .. ':target_failures', failed) end
if failed > 0 then
  local allowed = tonumber(r[F.allowed_errors])
  local failures = redis.call('HINCRBY', run, F.failures, failed)
  if failures - failed <= allowed and failures > allowed then
    state = halt('error budget exceeded: ' .. failures .. ' targets failed, ' .. allowed .. ' allowed')
  end
end
if ARGV[6] ~= '' then
  local next_entry = ARGV[6]
  if window then
    local entry = cjson.decode(next_entry)
    entry.w = window
    next_entry = cjson.encode(entry)
  end
  redis.call('LPUSH', pending, next_entry)
elseif redis.call('HINCRBY', locstate, ARGV[2] .. ':remaining', -1) <= 0 then
  redis.call('HINCRBY', run, F.active_locations, -1)
  redis.call('HINCRBY', run, F.locations_done, 1)
end
return {1, state}
