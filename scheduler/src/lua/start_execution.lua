-- ARGV max in flight, batch size, allowed errors, and the count of targets
-- they were resolved against. Returns the state. Called when the first
-- location is discovered and again as more are, with limits resolved against
-- the targets discovered so far; last when all are. Limits resolved against
-- fewer targets than those in place are stale — a report applied at the same
-- time, by this replica or another, resolved them later against more — and
-- are not written: the limits only grow, up to what the total gives.
if tonumber(ARGV[4]) >= (tonumber(redis.call('HGET', run, 'limits_resolved_for')) or -1) then
  redis.call('HSET', run, 'max_in_flight', ARGV[1], 'batch_size', ARGV[2],
    'allowed_errors', ARGV[3], 'limits_resolved_for', ARGV[4])
end
if redis.call('HGET', run, 'state') == STATE.Discovering then
  redis.call('HSET', run, 'state', STATE.Running, 'reason', 'discovery complete')
end
return redis.call('HGET', run, 'state')
