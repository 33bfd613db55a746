-- ARGV max in flight, batch size, allowed errors. Returns the state. Called
-- when the first location is discovered and again as more are, with limits
-- resolved against the targets discovered so far; last when all are.
redis.call('HSET', run, 'max_in_flight', ARGV[1], 'batch_size', ARGV[2], 'allowed_errors', ARGV[3])
if redis.call('HGET', run, 'state') == STATE.Discovering then
  redis.call('HSET', run, 'state', STATE.Running, 'reason', 'discovery complete')
end
return redis.call('HGET', run, 'state')
