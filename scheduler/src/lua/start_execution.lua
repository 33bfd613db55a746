-- ARGV max in flight, batch size, allowed errors. Returns the state.
redis.call('HSET', run, 'max_in_flight', ARGV[1], 'batch_size', ARGV[2], 'allowed_errors', ARGV[3])
if redis.call('HGET', run, 'state') == STATE.Discovering then
  redis.call('HSET', run, 'state', STATE.Running, 'reason', 'discovery complete')
end
return redis.call('HGET', run, 'state')
