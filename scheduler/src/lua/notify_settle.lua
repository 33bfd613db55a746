-- KEYS due, delivery; ARGV delivery id, outcome (delivered, failed or
-- retry), when a retry is due (ms), seconds a settled delivery is kept,
-- the lease this try's claim set (ms). Counts the try; a retry is queued
-- again, a settled delivery leaves the queue, drops its bodies and expires
-- (kept so its id is never queued again). A delivery settled already stays
-- as it is; a retry or failure whose lease ran out (another replica holds
-- the delivery now) changes nothing. Returns 1 when recorded.
if redis.call('HGET', KEYS[2], 'state') ~= 'pending' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
if ARGV[2] ~= 'delivered' then
  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score or tonumber(score) ~= tonumber(ARGV[5]) then
    return 0
  end
end
local attempts = (tonumber(redis.call('HGET', KEYS[2], 'attempts')) or 0) + 1
redis.call('HSET', KEYS[2], 'attempts', attempts)
if ARGV[2] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
else
  redis.call('HSET', KEYS[2], 'state', ARGV[2])
  redis.call('HDEL', KEYS[2], 'json', 'text')
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return 1
