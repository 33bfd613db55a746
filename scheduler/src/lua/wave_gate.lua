-- ARGV the wave the outcome is about (0-based), outcome, reason, gate
-- results (JSON or ''), now (Unix ms). Outcomes: `next` and `approval` from
-- Baking (the gates passed; go on, or wait for an approver), `approved` from
-- AwaitingApproval, `resumed` from a Paused run a gate paused, `pause` and
-- `halt` from Baking (a gate failed). Returns 1 if the run moved.
local state = redis.call('HGET', run, F.state)
local wave = tonumber(redis.call('HGET', run, F.wave)) or 0
if tostring(wave) ~= ARGV[1] then return 0 end
local outcome = ARGV[2]
local from = STATE.Baking
if outcome == 'approved' then from = STATE.AwaitingApproval end
if outcome == 'resumed' then
  if redis.call('HGET', run, F.gate_failed_wave) ~= ARGV[1] then return 0 end
  from = STATE.Paused
end
if state ~= from then return 0 end
if ARGV[4] ~= '' then redis.call('HSET', run, wave_field(wave, WF.gates), ARGV[4]) end
redis.call('HSET', run, wave_field(wave, WF.outcome), outcome)
if outcome == 'next' or outcome == 'approved' or outcome == 'resumed' then
  redis.call('HSET', run, F.state, STATE.Running, F.reason, ARGV[3], F.wave, wave + 1,
    F.wave_failures_base, redis.call('HGET', run, F.failures) or 0,
    wave_field(wave + 1, WF.started_ms), ARGV[5])
  redis.call('HDEL', run, F.bake_until, F.gate_failed_wave)
elseif outcome == 'approval' then
  redis.call('HSET', run, F.state, STATE.AwaitingApproval, F.reason, ARGV[3])
elseif outcome == 'pause' then
  redis.call('HSET', run, F.state, STATE.Paused, F.reason, ARGV[3], F.gate_failed_wave, wave)
else
  halt(ARGV[3])
end
return 1
