-- Shared by every run script: the ten keys of one run, and a halt that
-- never overrides a final state. STATE, FINAL and BATCH_STRIDE come from
-- Rust (scheduler::scripts), so no state name or stride is written here.
local run, locations, locstate, pages, pending, admitted, applied, counters, ready, discovering =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local function halt(reason)
  local state = redis.call('HGET', run, F.state)
  if not FINAL[state] then
    redis.call('HSET', run, F.state, STATE.Halted, F.reason, reason, F.halt_reason, reason)
  end
end
local function location_count() return tonumber(redis.call('HGET', run, F.location_count)) end
local function location_discovered()
  return redis.call('HINCRBY', run, F.discovered_locations, 1) == location_count()
end
