-- Shared by every run script: the eleven keys of one run, and a halt that
-- never overrides a final state. STATE, FINAL and BATCH_STRIDE come from
-- Rust (scheduler::scripts), so no state name or stride is written here.
local run, locations, locstate, pages, pending, admitted, applied, counters, ready, discovering, parked =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
-- When the run reached its final state, by Redis's clock (Unix ms): the
-- seconds, then the milliseconds of the microseconds, as digits.
local function mark_ended()
  local now = redis.call('TIME')
  redis.call('HSET', run, F.ended_ms,
    now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1e3)))
end
-- The run's fields `...` in one HMGET (not one HGET each: every command a
-- script makes is a command Redis counts and runs): a table by field name,
-- `false` for an absent field, as HGET answers.
local function run_fields(...)
  local names = {...}
  local values = redis.call('HMGET', run, unpack(names))
  local fields = {}
  for i, name in ipairs(names) do fields[name] = values[i] end
  return fields
end
-- Halts a live run; returns the run's state after (Halted, or the final
-- state it was in).
local function halt(reason)
  local state = redis.call('HGET', run, F.state)
  if not FINAL[state] then
    redis.call('HSET', run, F.state, STATE.Halted, F.reason, reason, F.halt_reason, reason)
    mark_ended()
    return STATE.Halted
  end
  return state
end
local function location_count() return tonumber(redis.call('HGET', run, F.location_count)) end
-- A cancelled run discovers no more: the locations being discovered (at
-- most the discovery window) are closed as they stand — targets their pages
-- found so far stay, to be reported Not Started, and pages arriving later
-- are ignored — and those never opened never will be (no Discover job of
-- theirs exists). Bounded work whatever the run's size; counted discovered,
-- so the run can drain without a worker calling AWS for it.
local function end_discovery()
  local count = location_count()
  local closed = 0
  for _, loc in ipairs(redis.call('SMEMBERS', discovering)) do
    local seen = tonumber(redis.call('HGET', locstate, loc .. ':pages_seen')) or 0
    redis.call('HSET', locstate, loc .. ':pages', seen, loc .. ':closed', 1)
    closed = closed + 1
  end
  redis.call('DEL', discovering)
  local next = tonumber(redis.call('HGET', run, F.discover_next)) or 0
  if next < count then
    closed = closed + (count - next)
    redis.call('HSET', run, F.discover_next, count)
  end
  local discovered = tonumber(redis.call('HGET', run, F.discovered_locations)) or 0
  redis.call('HSET', run, F.discovered_locations, math.min(count, discovered + closed))
end
local function location_discovered()
  return redis.call('HINCRBY', run, F.discovered_locations, 1) == location_count()
end
