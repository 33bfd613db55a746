-- KEYS due, delivery; ARGV delivery id, due (ms), then the delivery's
-- field/value pairs. Queues a notification once: a delivery id known
-- already (queued, or settled within the last week) is left as it is.
-- Returns 1 when queued.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
