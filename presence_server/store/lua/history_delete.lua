-- history_delete.lua: delete a channel's messages between two stream ids (XRANGE bounds: "-", "+",
-- "<tt>-0" inclusive or "(<tt>-0" exclusive), in steps of 500. KEYS[1] the message log, KEYS[2] and
-- KEYS[3] its history_gone and history_ttl sets (KEYS[4], its rank counter, is not changed). ARGV[1] low bound, ARGV[2] high bound, ARGV[3] the
-- sets' lifetime (s). Returns how many entries went.
local low, high = ARGV[1], ARGV[2]
local removed = 0
while true do
  local entries = redis.call('XRANGE', KEYS[1], low, high, 'COUNT', 500)
  if #entries == 0 then
    break
  end
  local ids = {}
  for i, entry in ipairs(entries) do
    ids[i] = entry[1]
    local tt = string.match(entry[1], '^(%d+)')
    local f, ranked, hidden = entry[2], false, false
    for j = 1, #f, 2 do
      if f[j] == MESSAGE.rank then
        ranked = true
      elseif f[j] == MESSAGE.kind or f[j] == MESSAGE.live_only then
        hidden = true
      end
    end
    if ranked and not hidden then
      -- Counted in the ranks: message counts must subtract it from now on (and only once).
      redis.call('ZADD', KEYS[2], 0, tt)
      redis.call('ZREM', KEYS[3], tt)
    end
  end
  removed = removed + redis.call('XDEL', KEYS[1], unpack(ids))
  low = '(' .. ids[#ids]
end
if removed > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
return removed
