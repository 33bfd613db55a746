#!lua name=flotilla_worker_v1
-- The only Lua a worker runs: Redis Functions it calls with FCALL. A
-- worker's Redis user may not EVAL or load scripts, so a stolen worker
-- credential cannot run Lua of its own (one endless script would stall Redis
-- for every service). The scheduler loads this library as it connects.
-- Functions run with the caller's ACL: they give a worker no right it does
-- not have; they only keep it from running anything else.

-- KEYS[1] bucket hash; ARGV rate (/s), burst, tokens, longest wait (s).
-- GCRA: 'tat' is the instant the bucket would be full again. The tokens are
-- the caller's once `tat + tokens/rate - burst/rate` has passed: when that is
-- at most the longest wait away, they are reserved for that instant (the
-- caller sleeps until then); otherwise nothing is taken. Returns
-- {reserved (0/1), seconds to wait}.
-- The bucket outlives its last reservation by at least 30 s, so an idle
-- one goes: its expiry ('expires', Unix s) is pushed out to 90 s past
-- the reservation only when it would come closer than 30 s — one PEXPIRE
-- a minute for a busy bucket, not one per token (every command a function
-- makes is one Redis runs: three a token, four with the PEXPIRE).
local function take_tokens(keys, args)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
  local rate, burst = tonumber(args[1]), tonumber(args[2])
  local wanted, max_wait = tonumber(args[3]), tonumber(args[4])
  local interval = 1 / rate
  local stored = redis.call('HMGET', keys[1], 'tat', 'expires')
  local tat = math.max(tonumber(stored[1]) or now, now)
  local wait = math.max(0, tat + (wanted - burst) * interval - now)
  if wait > max_wait then return {0, string.format('%.6f', wait)} end
  local new_tat = tat + wanted * interval
  if (tonumber(stored[2]) or 0) < new_tat + 30 then
    redis.call('HSET', keys[1], 'tat', string.format('%.6f', new_tat),
      'expires', string.format('%.3f', new_tat + 90))
    redis.call('PEXPIRE', keys[1], math.ceil((new_tat + 90 - now) * 1000))
  else
    redis.call('HSET', keys[1], 'tat', string.format('%.6f', new_tat))
  end
  return {1, string.format('%.6f', wait)}
end

-- KEYS[1] claim; ARGV expected, replacement. Compare-and-set; returns 1 if set.
local function reclaim_send(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('SET', keys[1], args[2], 'KEEPTTL')
    return 1
  end
  return 0
end

-- KEYS[1] claim; ARGV expected. Compare-and-delete; returns 1 if deleted.
local function release_send(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    return redis.call('DEL', keys[1])
  end
  return 0
end

redis.register_function('flotilla_take_tokens_v1', take_tokens)
redis.register_function('flotilla_reclaim_send_v1', reclaim_send)
redis.register_function('flotilla_release_send_v1', release_send)
