-- KEYS campaign hash; ARGV version, approver, now, who made the approver's
-- token ('' when flotilla did not). Returns {status, author, approver,
-- approved_ms}: status 0 unknown version, 1 approved now, 2 was approved
-- already, 3 the approver is the author, 4 the author made the approver's
-- token.
local v = ARGV[1]
if redis.call('HEXISTS', KEYS[1], 'v:' .. v) == 0 then return {0, '', '', '0'} end
local author = redis.call('HGET', KEYS[1], 'author:' .. v) or ''
local approver = redis.call('HGET', KEYS[1], 'approver:' .. v)
if approver then return {2, author, approver, redis.call('HGET', KEYS[1], 'approved_ms:' .. v) or '0'} end
if author == ARGV[2] then return {3, author, '', '0'} end
if ARGV[4] ~= '' and author == ARGV[4] then return {4, author, '', '0'} end
redis.call('HSET', KEYS[1], 'approver:' .. v, ARGV[2], 'approved_ms:' .. v, ARGV[3])
return {1, author, ARGV[2], ARGV[3]}
