-- leave.lua: one uuid leaves several channels at once.
-- Own arguments (arg(i), after common.lua's): 1 uuid, 2 its member in the occupants and state
-- (fields.py: member), then per channel: name.
-- Returns the number of channels left. The wake-up names the uuid (see publish_wakes).
local uuid, member = arg(1), arg(2)
local left = 0
for i = 1, channel_count() do
  local occ_key, state_key = channel_keys(i)
  local channel = arg(2 + i)
  local score = redis.call('ZSCORE', occ_key, member)
  if score then
    -- A lapsed occupant not yet swept timed out before it left: report what happened first.
    remove_occupant(i, channel, member, uuid, tonumber(score) > NOW_MS and 'leave' or 'timeout')
    refresh_due(channel, occ_key, state_key)
    left = left + 1
  end
end
publish_wakes(uuid)
return left
