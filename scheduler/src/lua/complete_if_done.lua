-- Moves a live run to Completed once every location is done (also outside
-- its maintenance windows: its last commands may end after one closes).
-- Returns the state.
local r = run_fields(F.state, F.locations_done, F.location_count)
local state = r[F.state]
local done = tonumber(r[F.locations_done]) or 0
if (state == STATE.Running or state == STATE.OutsideWindow) and done >= tonumber(r[F.location_count]) then
  redis.call('HSET', run, F.state, STATE.Completed, F.reason, 'every location is done')
  mark_ended()
  return STATE.Completed
end
return state
