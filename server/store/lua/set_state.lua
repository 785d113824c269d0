-- set_state.lua: replace one uuid's state on several channels ('{}' clears it).
-- ARGV[6] uuid, ARGV[7] state JSON object text, then per channel: ARGV name.
-- Each channel whose state really changes gets one state-change event. Returns that count.
local uuid, state = ARGV[6], ARGV[7]
local changed = 0
for i = 1, (#KEYS - 3) / 3 do
  local occ_key, state_key, log_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local old_state = redis.call('HGET', state_key, uuid) or '{}'
  if old_state ~= state then
    if state == '{}' then
      redis.call('HDEL', state_key, uuid)
    else
      redis.call('HSET', state_key, uuid, state)
      redis.call('EXPIRE', state_key, BACKSTOP)
    end
    log_presence(log_key, 'state-change', uuid, occ_key, state)
    changed = changed + 1
  end
end
return changed
