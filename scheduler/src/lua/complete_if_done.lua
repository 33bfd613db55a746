-- Moves a live run to Completed once every location is done (also outside
-- its maintenance windows: its last commands may end after one closes).
-- Returns the state.
local state = redis.call('HGET', run, F.state)
local done = tonumber(redis.call('HGET', run, F.locations_done)) or 0
if (state == STATE.Running or state == STATE.OutsideWindow) and done >= location_count() then
  redis.call('HSET', run, F.state, STATE.Completed, F.reason, 'every location is done')
  mark_ended()
  return STATE.Completed
end
return state
