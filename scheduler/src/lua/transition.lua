-- ARGV from-states (comma separated), to-state, reason. Returns 1 if changed.
-- A cancel also ends discovery (see end_discovery).
local state = redis.call('HGET', run, F.state)
for from in string.gmatch(ARGV[1], '[^,]+') do
  if state == from then
    redis.call('HSET', run, F.state, ARGV[2], F.reason, ARGV[3])
    if ARGV[2] == STATE.Cancelled then end_discovery() end
    if FINAL[ARGV[2]] then mark_ended() end
    return 1
  end
end
return 0
