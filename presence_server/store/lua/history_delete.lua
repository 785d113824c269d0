-- history_delete.lua: delete a channel's messages between two stream ids (XRANGE bounds: "-", "+",
-- "<tt>-0" inclusive or "(<tt>-0" exclusive), in steps of 500. KEYS[1] the message log.
-- ARGV[1] low bound, ARGV[2] high bound. Returns how many entries went.
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
  end
  removed = removed + redis.call('XDEL', KEYS[1], unpack(ids))
  low = '(' .. ids[#ids]
end
return removed
