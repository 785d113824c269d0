-- leave.lua: one uuid leaves several channels at once.
-- ARGV[6] uuid, then per channel: ARGV name. Returns the number of channels left.
local uuid = ARGV[6]
local left = 0
local rec = where_get(uuid)
for i = 1, (#KEYS - 3) / 3 do
  local occ_key, state_key, log_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local channel = ARGV[6 + i]
  local score = redis.call('ZSCORE', occ_key, uuid)
  if score then
    -- A lapsed occupant not yet swept timed out before it left: report what happened first.
    local action = tonumber(score) > NOW_MS and 'leave' or 'timeout'
    remove_occupant(uuid, channel, occ_key, state_key, log_key, action)
    refresh_due(channel, occ_key, state_key)
    left = left + 1
    if rec then
      for j = #rec.c, 1, -1 do
        if rec.c[j] == channel then
          table.remove(rec.c, j)
        end
      end
    end
  end
end
if rec and left > 0 then
  where_put(uuid, rec)
end
return left
