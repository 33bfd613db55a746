-- KEYS[1] claim; ARGV expected, replacement. Compare-and-set; returns 1 if set.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
