-- ARGV now (Unix ms), per-target windows open now (JSON: one boolean per
-- window of the campaign, in order; [] without window_tag). Releases ready
-- (fully discovered) locations FIFO up to
-- the location concurrency and batches up to max in flight; in a rollout, new
-- targets (step 0) only up to the current wave's cap, and a wave whose every
-- target is through moves the run to Baking; a live run whose every location
-- is done completes. Per-target windows: a batch whose window (entry.w, from
-- 1; 0 for none) is closed is parked (scored by its window) instead, and
-- taken first, before `pending`, once its window is open. Returns {state after, bake until (ms) or '', the
-- admitted batches (JSON entries)...}.
local r = run_fields(F.state, F.bake_until, F.rollout, F.wave_caps, F.batch_size,
  F.location_concurrency, F.active_locations, F.in_flight, F.max_in_flight, F.wave, F.wave_admitted,
  F.locations_done, F.location_count)
local state = r[F.state]
local done = tonumber(r[F.locations_done]) or 0
-- Completes a live run whose every location is done — also outside its
-- maintenance windows: its last commands may end after one closes. Returns
-- the state after.
local function complete_if_done()
  if (state == STATE.Running or state == STATE.OutsideWindow)
      and done >= tonumber(r[F.location_count]) then
    redis.call('HSET', run, F.state, STATE.Completed, F.reason, 'every location is done')
    mark_ended()
    return STATE.Completed
  end
  return state
end
if state ~= STATE.Running then
  return {complete_if_done() or '', r[F.bake_until] or ''}
end
local caps = nil
if r[F.rollout] == '1' then
  -- The waves resolve against the total: nothing starts before discovery ends.
  if not r[F.wave_caps] then return {complete_if_done(), ''} end
  caps = cjson.decode(r[F.wave_caps])
end
local batch_size = tonumber(r[F.batch_size])
local open_windows = cjson.decode(ARGV[2] or '[]')
local function closed(window)
  return window and window > 0 and open_windows[window] ~= true
end
-- Queues the page's `ids` (of `window`, or none) as batches from chunk `c`;
-- returns the next chunk number.
local function queue(loc, p, c, ids, window)
  local i = 1
  while i <= #ids do
    local chunk = {}
    for j = i, math.min(i + batch_size - 1, #ids) do chunk[#chunk + 1] = ids[j] end
    local entry = {l = loc, b = p * BATCH_STRIDE + c, s = 0, i = chunk}
    if window then entry.w = window end
    if closed(window) then
      redis.call('ZADD', parked, window, cjson.encode(entry))
    else
      redis.call('RPUSH', pending, cjson.encode(entry))
    end
    c, i = c + 1, i + batch_size
  end
  return c
end
local function activate(loc, page_count)
  local chunks = 0
  -- An instance listed on two pages (a listing that moved while it was
  -- paged through, or a forged page) is batched once: sent once.
  local seen, repeated = {}, 0
  local function unseen(ids)
    local fresh = {}
    for _, id in ipairs(ids) do
      if seen[id] then repeated = repeated + 1 else seen[id] = true; fresh[#fresh + 1] = id end
    end
    return fresh
  end
  for p = 0, page_count - 1 do
    local raw = redis.call('HGET', pages, loc .. ':' .. p)
    if raw then
      local page = cjson.decode(raw)
      local c = 0
      if type(page[1]) == 'table' then
        -- Per-target windows: the page's ids by window.
        for _, group in ipairs(page) do c = queue(loc, p, c, unseen(group.i), group.w) end
      else
        c = queue(loc, p, 0, unseen(page), nil)
      end
      chunks = chunks + c
      redis.call('HDEL', pages, loc .. ':' .. p)
    end
  end
  if repeated > 0 then
    redis.call('HINCRBY', locstate, loc .. ':targets', -repeated)
    redis.call('HINCRBY', run, F.total, -repeated)
  end
  redis.call('HSET', locstate, loc .. ':remaining', chunks, loc .. ':activated', 1)
  return chunks
end
local concurrency = tonumber(r[F.location_concurrency])
local active = tonumber(r[F.active_locations]) or 0
while active < concurrency do
  local loc = redis.call('LPOP', ready)
  if not loc then break end
  local chunks = 0
  local l = redis.call('HMGET', locstate, loc .. ':failed', loc .. ':pages')
  if not l[1] then chunks = activate(loc, tonumber(l[2]) or 0) end
  if chunks > 0 then
    active = active + 1
  else
    done = redis.call('HINCRBY', run, F.locations_done, 1)
  end
end
local in_flight = tonumber(r[F.in_flight]) or 0
local max = tonumber(r[F.max_in_flight])
local wave = tonumber(r[F.wave]) or 0
local wave_admitted = tonumber(r[F.wave_admitted]) or 0
local out = {}
local function admit(raw, entry)
  in_flight = in_flight + #entry.i
  if entry.s == 0 then wave_admitted = wave_admitted + #entry.i end
  redis.call('HSET', admitted, entry.l .. '|' .. entry.b .. '|' .. entry.s, raw)
  out[#out + 1] = raw
end
local full = false
-- Parked batches of the windows open now come first: they waited longest.
for window, open in ipairs(open_windows) do
  while open and not full do
    local raw = redis.call('ZRANGEBYSCORE', parked, window, window, 'LIMIT', 0, 1)[1]
    if not raw then break end
    local entry = cjson.decode(raw)
    if in_flight > 0 and in_flight + #entry.i > max then
      full = true
    else
      redis.call('ZREM', parked, raw)
      admit(raw, entry)
    end
  end
end
while not full do
  local raw = redis.call('LINDEX', pending, 0)
  if not raw then break end
  local entry = cjson.decode(raw)
  if closed(entry.w) then
    -- Its window closed while it waited: parked until the window opens.
    redis.call('LPOP', pending)
    redis.call('ZADD', parked, entry.w, raw)
  else
    if caps and entry.s == 0 then
      local room = caps[wave + 1] - wave_admitted
      if room <= 0 then break end
      if #entry.i > room then
        -- The wave ends inside this batch: its first targets go now, the
        -- rest wait under a new batch id (one more batch for the location).
        local head, rest = {}, {}
        for j = 1, #entry.i do
          if j <= room then head[#head + 1] = entry.i[j] else rest[#rest + 1] = entry.i[j] end
        end
        local split = SPLIT_BASE + redis.call('HINCRBY', run, F.batch_splits, 1)
        redis.call('LSET', pending, 0, cjson.encode({l = entry.l, b = split, s = 0, i = rest}))
        entry.i = head
        raw = cjson.encode(entry)
        redis.call('LPUSH', pending, raw)
        redis.call('HINCRBY', locstate, entry.l .. ':remaining', 1)
      end
    end
    if in_flight > 0 and in_flight + #entry.i > max then break end
    redis.call('LPOP', pending)
    admit(raw, entry)
  end
end
redis.call('HSET', run, F.active_locations, active, F.in_flight, in_flight, F.wave_admitted, wave_admitted)
if caps and wave + 1 < #caps and wave_admitted >= caps[wave + 1] and in_flight == 0 then
  -- Later steps of the wave's targets wait at the head of `pending`.
  local head = redis.call('LINDEX', pending, 0)
  if not (head and cjson.decode(head).s > 0) then
    local failures = tonumber(redis.call('HGET', run, F.failures)) or 0
    local base = tonumber(redis.call('HGET', run, F.wave_failures_base)) or 0
    local first = (wave == 0) and 0 or caps[wave]
    local bake_until = tonumber(ARGV[1]) + (tonumber(redis.call('HGET', run, F.bake_ms)) or 0)
    redis.call('HSET', run, F.state, STATE.Baking, F.bake_until, bake_until,
      wave_field(wave, WF.targets), wave_admitted - first, wave_field(wave, WF.failures), failures - base, wave_field(wave, WF.done_ms), ARGV[1],
      F.reason, 'wave ' .. (wave + 1) .. ' of ' .. #caps .. ' is through; baking, then its gates')
    return {STATE.Baking, tostring(bake_until)}
  end
end
local answer = {complete_if_done(), ''}
for _, raw in ipairs(out) do answer[#answer + 1] = raw end
return answer
