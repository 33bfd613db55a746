-- ARGV the wave the outcome is about (0-based), outcome, reason, gate
-- results (JSON or ''), now (Unix ms). Outcomes: `next` and `approval` from
-- Baking (the gates passed; go on, or wait for an approver), `approved` from
-- AwaitingApproval, `resumed` from a Paused run a gate paused, `pause` and
-- `halt` from Baking (a gate failed). Returns 1 if the run moved.
local state = redis.call('HGET', run, 'state')
local wave = tonumber(redis.call('HGET', run, 'wave')) or 0
if tostring(wave) ~= ARGV[1] then return 0 end
local outcome = ARGV[2]
local from = STATE.Baking
if outcome == 'approved' then from = STATE.AwaitingApproval end
if outcome == 'resumed' then
  if redis.call('HGET', run, 'gate_failed_wave') ~= ARGV[1] then return 0 end
  from = STATE.Paused
end
if state ~= from then return 0 end
local w = 'wave:' .. wave .. ':'
if ARGV[4] ~= '' then redis.call('HSET', run, w .. 'gates', ARGV[4]) end
redis.call('HSET', run, w .. 'outcome', outcome)
if outcome == 'next' or outcome == 'approved' or outcome == 'resumed' then
  redis.call('HSET', run, 'state', STATE.Running, 'reason', ARGV[3], 'wave', wave + 1,
    'wave_failures_base', redis.call('HGET', run, 'failures') or 0,
    'wave:' .. (wave + 1) .. ':started_ms', ARGV[5])
  redis.call('HDEL', run, 'bake_until', 'gate_failed_wave')
elseif outcome == 'approval' then
  redis.call('HSET', run, 'state', STATE.AwaitingApproval, 'reason', ARGV[3])
elseif outcome == 'pause' then
  redis.call('HSET', run, 'state', STATE.Paused, 'reason', ARGV[3], 'gate_failed_wave', wave)
else
  halt(ARGV[3])
end
return 1
