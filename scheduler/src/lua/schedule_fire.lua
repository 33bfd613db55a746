-- KEYS lease, fired hash, fires log; ARGV lease value, campaign, occurrence ms,
-- start (1) or skip (0). Returns 1 when recorded, 0 if already, -1 if not the leader.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = redis.call('HGET', KEYS[2], ARGV[2])
if last and tonumber(string.match(last, '^(%d+)')) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local verb = 'fired'
if ARGV[4] == '0' then verb = 'skipped' end
redis.call('RPUSH', KEYS[3], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. verb .. ' ' .. ARGV[1])
redis.call('LTRIM', KEYS[3], -10000, -1)
return 1
