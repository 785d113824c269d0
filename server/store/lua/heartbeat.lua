-- heartbeat.lua: refresh (or start) one uuid's presence on several channels, with optional state.
-- ARGV[6] uuid, ARGV[7] presence timeout in seconds ('' = the uuid's last one, else ARGV[8]),
-- ARGV[8] default timeout (s), then per channel: ARGV name, ARGV state ('' = keep, '{}' = clear,
-- else the new state object as JSON text).
-- Returns {joins, keyset earliest deadline ('' unless it moved earlier)}.
local uuid = ARGV[6]
local rec = where_get(uuid)
local timeout = tonumber(ARGV[7])
local rec_changed = false
if not rec then
  rec = {t = timeout or tonumber(ARGV[8]), c = {}}
  rec_changed = true
elseif timeout and rec.t ~= timeout then
  rec.t = timeout
  rec_changed = true
end
local deadline = NOW_MS + math.floor(rec.t * 1000)
local joins = 0
local earlier = false

for i = 1, (#KEYS - 3) / 3 do
  local occ_key, state_key, log_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local channel, new_state = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  local score = redis.call('ZSCORE', occ_key, uuid)
  local present = score and tonumber(score) > NOW_MS
  if score and not present then
    -- Lapsed but not yet swept: report the timeout the sweeper would have, then the join.
    remove_occupant(uuid, channel, occ_key, state_key, log_key, 'timeout')
  end
  redis.call('ZADD', occ_key, deadline, uuid)
  redis.call('EXPIRE', occ_key, BACKSTOP)
  local old_state = redis.call('HGET', state_key, uuid)
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
    log_presence(log_key, 'join', uuid, occ_key, state or nil)
    joins = joins + 1
    if not score then
      table.insert(rec.c, channel)
      rec_changed = true
    end
  elseif (state or '{}') ~= (old_state or '{}') then
    log_presence(log_key, 'state-change', uuid, occ_key, state or '{}')
  end
  if refresh_due(channel, occ_key, state_key) then
    earlier = true
  end
end

if rec_changed then
  where_put(uuid, rec)
end
return {joins, earlier and keyset_min_due() or ''}
