-- Releases ready (fully discovered) locations FIFO up to the location
-- concurrency and batches up to max in flight. Returns the admitted batches
-- (JSON entries).
if redis.call('HGET', run, 'state') ~= STATE.Running then return {} end
local batch_size = tonumber(redis.call('HGET', run, 'batch_size'))
local function activate(loc)
  local page_count = tonumber(redis.call('HGET', locstate, loc .. ':pages')) or 0
  local chunks = 0
  for p = 0, page_count - 1 do
    local raw = redis.call('HGET', pages, loc .. ':' .. p)
    if raw then
      local ids = cjson.decode(raw)
      local c, i = 0, 1
      while i <= #ids do
        local chunk = {}
        for j = i, math.min(i + batch_size - 1, #ids) do chunk[#chunk + 1] = ids[j] end
        redis.call('RPUSH', pending, cjson.encode({l = loc, b = p * BATCH_STRIDE + c, s = 0, i = chunk}))
        c, chunks, i = c + 1, chunks + 1, i + batch_size
      end
      redis.call('HDEL', pages, loc .. ':' .. p)
    end
  end
  redis.call('HSET', locstate, loc .. ':remaining', chunks, loc .. ':activated', 1)
  return chunks
end
local concurrency = tonumber(redis.call('HGET', run, 'location_concurrency'))
local active = tonumber(redis.call('HGET', run, 'active_locations')) or 0
while active < concurrency do
  local loc = redis.call('LPOP', ready)
  if not loc then break end
  local chunks = 0
  if redis.call('HEXISTS', locstate, loc .. ':failed') == 0 then chunks = activate(loc) end
  if chunks > 0 then active = active + 1 else redis.call('HINCRBY', run, 'locations_done', 1) end
end
redis.call('HSET', run, 'active_locations', active)
local in_flight = tonumber(redis.call('HGET', run, 'in_flight')) or 0
local max = tonumber(redis.call('HGET', run, 'max_in_flight'))
local out = {}
while true do
  local raw = redis.call('LINDEX', pending, 0)
  if not raw then break end
  local entry = cjson.decode(raw)
  local n = #entry.i
  if in_flight > 0 and in_flight + n > max then break end
  redis.call('LPOP', pending)
  in_flight = in_flight + n
  redis.call('HSET', admitted, entry.l .. '|' .. entry.b .. '|' .. entry.s, raw)
  out[#out + 1] = raw
end
redis.call('HSET', run, 'in_flight', in_flight)
return out
