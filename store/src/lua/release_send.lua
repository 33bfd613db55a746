-- KEYS[1] claim; ARGV expected. Compare-and-delete; returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
