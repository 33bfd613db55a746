-- KEYS due, delivery; ARGV delivery id, outcome (delivered, failed or
-- retry), when a retry is due (ms), seconds a settled delivery is kept.
-- Counts the try; a retry is queued again, a settled delivery leaves the
-- queue and expires. One settled already (by a replica whose lease ran
-- out mid-try) stays as it is. Returns 1 when recorded.
if redis.call('HGET', KEYS[2], 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
if ARGV[2] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'state', ARGV[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
