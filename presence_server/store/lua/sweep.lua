-- sweep.lua: remove the occupants whose deadline has passed, one timeout each, and emit the
-- interval events that are due. Both happen after re-reading, inside this script, so they are
-- compare-and-act: any number of sweepers may pass the same channels and each expiry and each
-- interval event happens once; a heartbeat that landed first has already moved the deadline.
-- Own arguments (arg(i), after common.lua's): 1 most removals this call, 2 n: the first n channels
-- are due for expiry, the others for an interval event; 3 most uuids listed in one interval event;
-- then the channel names.
-- Returns {timeouts, when the sweeper must next look at the keyset ('' for never)}.
local budget = tonumber(arg(1))
local expiring = tonumber(arg(2))
local max_deltas = tonumber(arg(3))
local timeouts = 0

local function emit_interval(i, channel)
  local due = redis.call('ZSCORE', IVL_KEY, channel)
  if not due or tonumber(due) > NOW_MS then
    return
  end
  local occ_key, _, log_key, delta_key = channel_keys(i)
  local deltas = redis.call('HKEYS', delta_key)
  redis.call('DEL', delta_key)
  local count = occupancy(occ_key)
  local fields = {EVENT.action, 'interval', EVENT.occupancy, count, EVENT.timestamp, NOW_S}
  if #deltas > max_deltas then
    table.insert(fields, EVENT.refresh)
    table.insert(fields, '1')
  elseif #deltas > 0 then
    local lists = {join = {}, leave = {}, timeout = {}}
    for _, delta in ipairs(deltas) do
      local sep = string.find(delta, ':', 1, true)
      table.insert(lists[string.sub(delta, 1, sep - 1)], string.sub(delta, sep + 1))
    end
    for _, action in ipairs({'join', 'leave', 'timeout'}) do
      if #lists[action] > 0 then
        table.sort(lists[action])
        table.insert(fields, EVENT[action])
        table.insert(fields, cjson.encode(lists[action]))
      end
    end
  end
  append(log_key, channel .. PNPRES, channel, fields)
  if HOOKS_MAX > 0 then
    hook(channel, fields)
  end
  if count > ANNOUNCE_MAX then
    redis.call('ZADD', IVL_KEY, NOW_MS + INTERVAL_MS, channel)
  else
    redis.call('ZREM', IVL_KEY, channel)
  end
end

for i = 1, channel_count() do
  local channel = arg(3 + i)
  if i <= expiring then
    local occ_key, state_key = channel_keys(i)
    if budget > 0 then
      local expired = redis.call('ZRANGEBYSCORE', occ_key, '-inf', NOW_MS, 'LIMIT', 0, budget)
      for _, member in ipairs(expired) do
        remove_occupant(i, channel, member, uuid_of(member), 'timeout')
      end
      budget = budget - #expired
      timeouts = timeouts + #expired
    end
    refresh_due(channel, occ_key, state_key)
  else
    emit_interval(i, channel)
  end
end
publish_wakes()
return {timeouts, keyset_next(DUE_KEY, IVL_KEY)}
