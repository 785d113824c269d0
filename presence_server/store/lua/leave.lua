-- leave.lua: one uuid leaves several channels at once.
-- ARGV[10] uuid, then per channel: name. Returns the number of channels left.
local uuid = ARGV[10]
local left = 0
for i = 1, channel_count() do
  local occ_key, state_key = channel_keys(i)
  local channel = ARGV[10 + i]
  local score = redis.call('ZSCORE', occ_key, uuid)
  if score then
    -- A lapsed occupant not yet swept timed out before it left: report what happened first.
    remove_occupant(i, channel, uuid, tonumber(score) > NOW_MS and 'leave' or 'timeout')
    refresh_due(channel, occ_key, state_key)
    left = left + 1
  end
end
publish_wakes()
return left
