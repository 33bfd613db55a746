-- ARGV NotStarted counters (JSON). Counts a halted/cancelled run's never-started
-- targets once. Returns 1 the first time.
if redis.call('HSETNX', run, F.drained, 1) == 0 then return 0 end
for status, n in pairs(cjson.decode(ARGV[1])) do redis.call('HINCRBY', counters, status, n) end
redis.call('DEL', pending, pages, parked)
return 1
