-- heartbeat.lua: refresh (or start) one uuid's presence on several channels, with optional state.
-- A plain refresh (present everywhere, same timeout, no state) is refresh.lua's; this script serves
-- every other heartbeat, and any refresh too.
-- Own arguments (arg(i), after common.lua's): 1 uuid, 2 its member in the occupants and state
-- (fields.py: member), 3 presence timeout in seconds ('' = the uuid's last one, else the default),
-- 4 that timeout's code (fields.py: timeout_code; '' with no timeout), 5 default timeout (s), then
-- per channel: name, state ('' = keep, '{}' = clear, else the new state object as JSON text).
-- Returns {joins, when the sweeper must next look at the keyset ('' unless that moved earlier)}.
local uuid, member = arg(1), arg(2)
local timeout_arg, code_arg = arg(3), arg(4)
local default = tonumber(arg(5))
local FIRST_CHANNEL_ARG = 6
local count = channel_count()

local scores = {}
for i = 1, count do
  scores[i] = redis.call('ZSCORE', (channel_keys(i)), member)
end

-- A timeout no code tells (fields.py: TIMEOUT_IN_KEY) is in the uuid's own key, which outlives the
-- deadlines that stand for it by their own length; without the key, the default. The key is read only
-- for a deadline that says so: one another timeout replaced since (renew.lua writes the one sent and
-- leaves the key, as this script does) no longer does, and the key expires on its own.
local kept
local function kept_timeout()
  if kept == nil then
    kept = redis.call('GET', UUID_TIMEOUT_KEY)
  end
  if kept then
    return tonumber(kept), OCC.in_key
  end
  return default, 0
end

-- The timeout: the one sent, else the one the uuid's latest refresh on these channels used (its
-- deadline's code, or its key), else the default (docs/protocol.md 2.3).
local timeout, code
if timeout_arg ~= '' then
  timeout, code = tonumber(timeout_arg), tonumber(code_arg)
  if code == OCC.in_key then
    redis.call('SET', UUID_TIMEOUT_KEY, timeout_arg, 'EX', math.ceil(2 * timeout) + 60)
  end
else
  local latest
  for i = 1, count do
    if scores[i] then
      local deadline, held = deadline_code(tonumber(scores[i]))
      local length = held
      if held == OCC.in_key then
        length, held = kept_timeout()
      elseif held == 0 then
        length = default
      end
      local since = deadline - math.floor(length * 1000)
      if not latest or since > latest then
        latest, timeout, code = since, length, held
      end
    end
  end
  if not timeout then
    timeout, code = default, 0 -- present on none of the channels
  end
end
local deadline = NOW_MS + math.floor(timeout * 1000)
if code ~= 0 and code ~= OCC.in_key and deadline >= OCC.exact_below then
  -- Too far on for the code to be exact (fields.py: DEADLINE_CODED_BELOW): the key keeps it.
  code = OCC.in_key
  redis.call('SET', UUID_TIMEOUT_KEY, tostring(timeout), 'EX', math.ceil(2 * timeout) + 60)
end
local score = deadline_score(deadline, code)
local joins = 0
local earlier = false

for i = 1, count do
  local occ_key, state_key, log_key, delta_key = channel_keys(i)
  local channel = arg(FIRST_CHANNEL_ARG + 2 * (i - 1))
  local new_state = arg(FIRST_CHANNEL_ARG + 2 * (i - 1) + 1)
  local present = scores[i] and tonumber(scores[i]) > NOW_MS
  if scores[i] and not present then
    -- Lapsed but not yet swept: report the timeout the sweeper would have, then the join.
    remove_occupant(i, channel, member, uuid, 'timeout')
  end
  redis.call('ZADD', occ_key, score, member)
  redis.call('EXPIRE', occ_key, BACKSTOP)
  -- The old state matters for a join (its event carries it) and for a new state (is it a change?).
  local old_state = false
  if not present or new_state ~= '' then
    old_state = redis.call('HGET', state_key, member)
  end
  local state = old_state
  if new_state == '{}' then
    redis.call('HDEL', state_key, member)
    state = false
  elseif new_state ~= '' then
    redis.call('HSET', state_key, member, new_state)
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
return {joins, earlier and keyset_next(DUE_KEY, IVL_KEY) or ''}
