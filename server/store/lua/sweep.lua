-- sweep.lua: remove the occupants whose deadline has passed on the given channels, one timeout
-- event each. Removal happens inside this script, after re-reading each deadline, so it is a
-- compare-and-remove: any number of sweepers may pass the same channels and each expiry is
-- reported once; a heartbeat that landed first has already moved the deadline and survives.
-- ARGV[6] most removals this call, then per channel: ARGV name.
-- Returns {timeouts, keyset earliest deadline ('' when nobody is present)}.
local budget = tonumber(ARGV[6])
local timeouts = 0
for i = 1, (#KEYS - 3) / 3 do
  local occ_key, state_key, log_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local channel = ARGV[6 + i]
  if budget > 0 then
    local expired = redis.call('ZRANGEBYSCORE', occ_key, '-inf', NOW_MS, 'LIMIT', 0, budget)
    for _, uuid in ipairs(expired) do
      remove_occupant(uuid, channel, occ_key, state_key, log_key, 'timeout')
      where_remove(uuid, channel)
    end
    budget = budget - #expired
    timeouts = timeouts + #expired
  end
  refresh_due(channel, occ_key, state_key)
end
return {timeouts, keyset_min_due()}
