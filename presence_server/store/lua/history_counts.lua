-- history_counts.lua: how many messages history shows in each channel's log after a timetoken, from
-- the entries' ranks (MESSAGE.rank) and the sets of messages that left early, without reading the
-- messages in between. KEYS: per channel its message log, history_gone and history_ttl sets.
-- ARGV[1] now (ms), ARGV[2] the count cap, then per channel the bound (a timetoken already raised to
-- the oldest one retention keeps, minus one), as a decimal. Returns the counts.
local now_ms, cap = ARGV[1], tonumber(ARGV[2])

local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then
      return f[i + 1]
    end
  end
  return nil
end

local function tt_of(entry)
  return string.match(entry[1], '^(%d+)')
end

local function rank(entry)
  return tonumber(field(entry, MESSAGE.rank) or '0')
end

local counts = {}
for c = 1, #KEYS / 3 do
  local log_key, gone_key, ttl_key = KEYS[3 * c - 2], KEYS[3 * c - 1], KEYS[3 * c]
  local bound = ARGV[2 + c]
  local count = 0
  local newest = redis.call('XREVRANGE', log_key, '+', '-', 'COUNT', 1)[1]
  if newest then
    -- Ranks count every shown message ever appended; between two entries they count those deleted
    -- or expired since too, so what left early is subtracted over the same span, (low, high].
    local high, low, before = tt_of(newest), nil, 0
    local at = redis.call('XREVRANGE', log_key, bound .. '-0', '-', 'COUNT', 1)[1]
    if at then
      before, low = rank(at), '(' .. tt_of(at)
    else
      -- Everything left is newer than the bound: count from just before the oldest entry.
      local first = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
      before, low = rank(first), '[' .. tt_of(first)
      if field(first, MESSAGE.rank) and not field(first, MESSAGE.kind) and not field(first, MESSAGE.live_only) then
        before = before - 1
      end
    end
    count = rank(newest) - before - redis.call('ZLEXCOUNT', gone_key, low, '[' .. high)
    local floor, inclusive = string.sub(low, 2), string.sub(low, 1, 1) == '['
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', ttl_key, '-inf', now_ms)) do
      if member <= high and (member > floor or (inclusive and member == floor)) then
        count = count - 1
      end
    end
  end
  counts[c] = math.max(0, math.min(count, cap))
end
return counts
