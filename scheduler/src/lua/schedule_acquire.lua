-- KEYS lease, token counter; ARGV holder, ttl ms. Returns the fencing token, 0 if another holds it.
local current = redis.call('GET', KEYS[1])
if current then
  local holder, token = string.match(current, '^(.*):(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
