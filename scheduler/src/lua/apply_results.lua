-- Applies the results reports of one run in a bundle: one script call for
-- the whole bundle, not one per report (each command a script makes is one
-- Redis runs; most are made once per bundle here, not once per report).
-- ARGV the most fields the counters hash takes new failure causes up to,
-- then six values per report: entry key, location, targets, failures,
-- counters (JSON), next entry or ''. A report applied before — by an
-- earlier call, or earlier in this bundle — changes nothing.
-- Returns {state after, then '1' (applied now) or '0' (a repeat) per report}.
local r = run_fields(F.state, F.in_flight, F.allowed_errors)
local state = r[F.state]
local max_fields = tonumber(ARGV[1])
local n = (#ARGV - 1) / 6
local function arg(k, i) return ARGV[1 + (k - 1) * 6 + i] end
local members = {}
for k = 1, n do members[k] = 'results:' .. arg(k, 1) end
local seen = redis.call('SMISMEMBER', applied, unpack(members))
local fresh, fresh_members, fresh_keys, taken = {}, {}, {}, {}
for k = 1, n do
  if seen[k] == 0 and not taken[members[k]] then
    taken[members[k]] = true
    fresh[k] = #fresh_keys + 1
    fresh_members[#fresh_members + 1] = members[k]
    fresh_keys[#fresh_keys + 1] = arg(k, 1)
  end
end
local out = {state}
if #fresh_keys == 0 then
  for k = 1, n do out[k + 1] = '0' end
  return out
end
redis.call('SADD', applied, unpack(fresh_members))
-- Per-target windows: a next step stays in its batch's window.
local was = redis.call('HMGET', admitted, unpack(fresh_keys))
redis.call('HDEL', admitted, unpack(fresh_keys))
local in_flight = tonumber(r[F.in_flight]) or 0
local allowed = tonumber(r[F.allowed_errors])
local counts, done = {}, 0
for k = 1, n do
  local j = fresh[k]
  if j then
    local loc, targets, failed = arg(k, 2), tonumber(arg(k, 3)), tonumber(arg(k, 4))
    in_flight = math.max(0, in_flight - targets)
    for field, c in pairs(cjson.decode(arg(k, 5))) do counts[field] = (counts[field] or 0) + c end
    -- Per location, for the console's grid: results in and targets failed.
    redis.call('HINCRBY', locstate, loc .. ':results', targets)
    if failed > 0 then
      redis.call('HINCRBY', locstate, loc .. ':target_failures', failed)
      local failures = redis.call('HINCRBY', run, F.failures, failed)
      if failures - failed <= allowed and failures > allowed then
        state = halt('error budget exceeded: ' .. failures .. ' targets failed, ' .. allowed .. ' allowed')
      end
    end
    local next_entry = arg(k, 6)
    if next_entry ~= '' then
      if was[j] and string.find(was[j], '"w":', 1, true) then
        local entry = cjson.decode(next_entry)
        entry.w = cjson.decode(was[j]).w
        next_entry = cjson.encode(entry)
      end
      redis.call('LPUSH', pending, next_entry)
    elseif redis.call('HINCRBY', locstate, loc .. ':remaining', -1) <= 0 then
      done = done + 1
    end
    out[k + 1] = '1'
  else
    out[k + 1] = '0'
  end
end
redis.call('HSET', run, F.in_flight, in_flight)
if done > 0 then
  redis.call('HINCRBY', run, F.active_locations, -done)
  redis.call('HINCRBY', run, F.locations_done, done)
end
for field, c in pairs(counts) do
  -- Failure causes (`f:step:status:cause`) are bounded a run: past the cap a
  -- new cause counts as `f:step:status:other`.
  if string.sub(field, 1, 2) == 'f:' and redis.call('HEXISTS', counters, field) == 0
      and redis.call('HLEN', counters) >= max_fields then
    field = string.match(field, '^(f:[^:]*:[^:]*:)') .. 'other'
  end
  redis.call('HINCRBY', counters, field, c)
end
out[1] = state
return out
