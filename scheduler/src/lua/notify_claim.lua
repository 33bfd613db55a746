-- KEYS due; ARGV now (ms), leased until (ms), at most. Takes the
-- deliveries due by now: each is due again when the lease ends, so one a
-- replica dies holding is tried again by another. Returns their ids.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
