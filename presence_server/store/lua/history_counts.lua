-- history_counts.lua: how many messages history shows in each channel's log after a timetoken, from
-- the entries' ranks (MESSAGE.rank) and the sets of messages that left early, without reading the
-- messages in between. KEYS: per channel its message log, history_gone and history_ttl sets and
-- history_rank counter.
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
for c = 1, #KEYS / 4 do
  local log_key, gone_key, ttl_key, rank_key = KEYS[4 * c - 3], KEYS[4 * c - 2], KEYS[4 * c - 1], KEYS[4 * c]
  local count = 0
  -- The first entry after the bound: the shown messages before it are its rank, less itself if shown.
  local first = redis.call('XRANGE', log_key, '(' .. ARGV[2 + c] .. '-0', '+', 'COUNT', 1)[1]
  if first then
    local before = rank(first)
    if field(first, MESSAGE.rank) and not field(first, MESSAGE.kind) and not field(first, MESSAGE.live_only) then
      before = before - 1
    end
    -- Ranks count every shown message ever appended, so what left early since is subtracted over
    -- the same span: from that first entry on.
    local low = tt_of(first)
    count = tonumber(redis.call('GET', rank_key) or '0') - before - redis.call('ZLEXCOUNT', gone_key, '[' .. low, '+')
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', ttl_key, '-inf', now_ms)) do
      if member >= low then
        count = count - 1
      end
    end
  end
  counts[c] = math.max(0, math.min(count, cap))
end
return counts
