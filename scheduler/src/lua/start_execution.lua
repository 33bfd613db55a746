-- ARGV max in flight, batch size, allowed errors, the count of targets
-- they were resolved against, and — once every location is discovered, for
-- a run with a rollout — the wave caps (JSON) and the canary locations
-- (JSON), else ''. Returns the state. Called when the first location is
-- discovered and again as more are, with limits resolved against the
-- targets discovered so far; last when all are. Limits resolved against
-- fewer targets than those in place are stale — a report applied at the same
-- time, by this replica or another, resolved them later against more — and
-- are not written: the limits only grow, up to what the total gives.
local r = run_fields(F.limits_resolved_for, F.state)
if tonumber(ARGV[4]) >= (tonumber(r[F.limits_resolved_for]) or -1) then
  redis.call('HSET', run, F.max_in_flight, ARGV[1], F.batch_size, ARGV[2],
    F.allowed_errors, ARGV[3], F.limits_resolved_for, ARGV[4])
end
if (ARGV[5] or '') ~= '' and redis.call('HEXISTS', run, F.wave_caps) == 0 then
  redis.call('HSET', run, F.wave_caps, ARGV[5], F.wave, 0, F.wave_admitted, 0,
    F.wave_failures_base, redis.call('HGET', run, F.failures) or 0)
  -- The canary locations go to the front of the admission FIFO (nothing of
  -- a rollout is admitted before this), in their order.
  local canary = {}
  for _, loc in ipairs(cjson.decode(ARGV[6])) do canary[loc] = true end
  if next(canary) then
    local first, rest = {}, {}
    for _, loc in ipairs(redis.call('LRANGE', ready, 0, -1)) do
      if canary[loc] then first[#first + 1] = loc else rest[#rest + 1] = loc end
    end
    redis.call('DEL', ready)
    for _, list in ipairs({first, rest}) do
      -- In chunks: unpack has a limit on values.
      for i = 1, #list, 512 do
        redis.call('RPUSH', ready, unpack(list, i, math.min(i + 511, #list)))
      end
    end
  end
end
if r[F.state] == STATE.Discovering then
  redis.call('HSET', run, F.state, STATE.Running, F.reason, 'discovery complete')
  return STATE.Running
end
return r[F.state]
