-- KEYS[1] bucket hash; ARGV rate (/s), burst, tokens, longest wait (s).
-- GCRA: 'tat' is the instant the bucket would be full again. The tokens are
-- the caller's once `tat + tokens/rate - burst/rate` has passed: when that is
-- at most the longest wait away, they are reserved for that instant (the
-- caller sleeps until then); otherwise nothing is taken. Returns
-- {reserved (0/1), seconds to wait}.
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local interval = 1 / rate
local tat = math.max(tonumber(redis.call('HGET', KEYS[1], 'tat')) or now, now)
local wait = math.max(0, tat + (wanted - burst) * interval - now)
if wait > max_wait then return {0, string.format('%.6f', wait)} end
local new_tat = tat + wanted * interval
redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', new_tat))
redis.call('PEXPIRE', KEYS[1], math.ceil((new_tat - now) * 1000) + 60000)
return {1, string.format('%.6f', wait)}
