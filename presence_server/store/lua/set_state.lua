-- set_state.lua: replace one uuid's state on several channels ('{}' clears it).
-- Own arguments (arg(i), after common.lua's): 1 uuid, 2 its member in the state hashes (fields.py:
-- member), 3 state JSON object text, then per channel: name.
-- Each channel whose state really changes gets one state-change event. Returns that count.
local uuid, member, state = arg(1), arg(2), arg(3)
local changed = 0
for i = 1, channel_count() do
  local occ_key, state_key, log_key, delta_key = channel_keys(i)
  local old_state = redis.call('HGET', state_key, member) or '{}'
  if old_state ~= state then
    if state == '{}' then
      redis.call('HDEL', state_key, member)
    else
      redis.call('HSET', state_key, member, state)
      redis.call('EXPIRE', state_key, BACKSTOP)
    end
    log_presence(arg(3 + i), occ_key, log_key, delta_key, 'state-change', uuid, state)
    changed = changed + 1
  end
end
publish_wakes()
return changed
