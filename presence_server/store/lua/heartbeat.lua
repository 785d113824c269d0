-- heartbeat.lua: refresh (or start) one uuid's presence on several channels, with optional state.
-- Own arguments (arg(i), after common.lua's): 1 uuid, 2 presence timeout in seconds ('' = the
-- uuid's last one, else the default), 3 default timeout (s), then per channel: name, state ('' =
-- keep, '{}' = clear, else the new state object as JSON text).
-- Returns {joins, when the sweeper must next look at the keyset ('' unless that moved earlier)}.
local uuid = arg(1)
-- The uuid's timeout: the one sent, else the last one it sent, else the default. Only a timeout
-- other than the default is remembered, in a key of its own that outlives it by its own length.
local timeout_arg = arg(2)
local timeout = tonumber(timeout_arg)
local default = tonumber(arg(3))
local FIRST_CHANNEL_ARG = 4
if timeout then
  if timeout == default then
    redis.call('DEL', UUID_TIMEOUT_KEY)
  else
    redis.call('SET', UUID_TIMEOUT_KEY, timeout_arg, 'EX', math.ceil(2 * timeout) + 60)
  end
else
  timeout = tonumber(redis.call('GET', UUID_TIMEOUT_KEY) or default)
end
local deadline = NOW_MS + math.floor(timeout * 1000)
local joins = 0
local earlier = false

for i = 1, channel_count() do
  local occ_key, state_key, log_key, delta_key = channel_keys(i)
  local channel = arg(FIRST_CHANNEL_ARG + 2 * (i - 1))
  local new_state = arg(FIRST_CHANNEL_ARG + 2 * (i - 1) + 1)
  local score = redis.call('ZSCORE', occ_key, uuid)
  local present = score and tonumber(score) > NOW_MS
  if score and not present then
    -- Lapsed but not yet swept: report the timeout the sweeper would have, then the join.
    remove_occupant(i, channel, uuid, 'timeout')
  end
  redis.call('ZADD', occ_key, deadline, uuid)
  redis.call('EXPIRE', occ_key, BACKSTOP)
  -- The old state matters for a join (its event carries it) and for a new state (is it a change?).
  local old_state = false
  if not present or new_state ~= '' then
    old_state = redis.call('HGET', state_key, uuid)
  end
  local state = old_state
  if new_state == '{}' then
    redis.call('HDEL', state_key, uuid)
    state = false
  elseif new_state ~= '' then
    redis.call('HSET', state_key, uuid, new_state)
    redis.call('EXPIRE', state_key, BACKSTOP)
    state = new_state
  end
  if not present then
    log_presence(channel, occ_key, log_key, delta_key, 'join', uuid, state or nil)
    redis.call('HINCRBY', COUNTERS_KEY, COUNTER.occupants, 1)
    joins = joins + 1
  elseif (state or '{}') ~= (old_state or '{}') then
    log_presence(channel, occ_key, log_key, delta_key, 'state-change', uuid, state or '{}')
  end
  -- The due index needs a lower bound of the channel's deadlines, so a heartbeat only ever lowers
  -- it (or adds the channel): no re-read of the channel's earliest deadline. A refresh of whoever
  -- was first to expire leaves the old, earlier figure; the sweep that finds nobody due then puts
  -- the exact one in place (refresh_due), about once per timeout per channel.
  if redis.call('ZADD', DUE_KEY, 'LT', 'CH', deadline, channel) == 1 then
    earlier = true
  end
end

publish_wakes()
if interval_added then
  earlier = true
end
return {joins, earlier and keyset_next() or ''}
