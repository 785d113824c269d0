-- common.lua: prepended to every mutating script at registration.
-- Shared calling convention of those scripts:
--   KEYS[1] timetoken counter, KEYS[2] due index, KEYS[3] where index,
--   then three keys per channel: occupants (zset), state (hash), log (stream).
--   ARGV[1] now (ms), ARGV[2] now as a timetoken (decimal string), ARGV[3] now (unix seconds),
--   ARGV[4] log length bound, ARGV[5] backstop expiry (s); script-specific arguments follow.
-- Scripts never read the clock: time always comes from the caller.

local TT_KEY, DUE_KEY, WHERE_KEY = KEYS[1], KEYS[2], KEYS[3]
local NOW_MS = tonumber(ARGV[1])
local NOW_TT = ARGV[2]
local NOW_S = ARGV[3]
local LOG_SIZE = ARGV[4]
local BACKSTOP = ARGV[5]

-- Timetokens are 17-digit integers, beyond a Lua double's exact range, so they are handled as
-- decimal strings: compared by length then text, and incremented by Redis itself (64-bit INCR).
-- Strictly increasing across the keyset whatever the callers' clocks do.
local function next_timetoken()
  local last = redis.call('GET', TT_KEY)
  if last and (#last > #NOW_TT or (#last == #NOW_TT and last >= NOW_TT)) then
    redis.call('INCR', TT_KEY)
    return redis.call('GET', TT_KEY)
  end
  redis.call('SET', TT_KEY, NOW_TT)
  return NOW_TT
end

local function occupancy(occ_key)
  return redis.call('ZCOUNT', occ_key, '(' .. NOW_MS, '+inf')
end

-- Appends one presence event to the channel's log, in the same script as the change it reports.
local function log_presence(log_key, action, uuid, occ_key, data)
  local tt = next_timetoken()
  if data then
    redis.call('XADD', log_key, 'MAXLEN', '~', LOG_SIZE, tt .. '-0',
      'a', action, 'u', uuid, 'o', occupancy(occ_key), 's', NOW_S, 'd', data)
  else
    redis.call('XADD', log_key, 'MAXLEN', '~', LOG_SIZE, tt .. '-0',
      'a', action, 'u', uuid, 'o', occupancy(occ_key), 's', NOW_S)
  end
  redis.call('EXPIRE', log_key, BACKSTOP)
  return tt
end

-- The due index holds each channel's earliest deadline, so the sweeper visits only channels with
-- someone due. A channel nobody occupies leaves the index and loses its state hash too: state of a
-- user who never joined is kept only while the channel has occupants (or until the backstop).
-- Returns true when the channel's earliest deadline moved earlier.
local function refresh_due(channel, occ_key, state_key)
  local before = redis.call('ZSCORE', DUE_KEY, channel)
  local first = redis.call('ZRANGE', occ_key, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', DUE_KEY, first[2], channel)
    return (not before) or tonumber(first[2]) < tonumber(before)
  end
  redis.call('ZREM', DUE_KEY, channel)
  redis.call('DEL', state_key)
  return false
end

local function keyset_min_due()
  local first = redis.call('ZRANGE', DUE_KEY, 0, 0, 'WITHSCORES')
  return first[2] or ''
end

-- where index: uuid -> {"t": last presence timeout, "c": [channels]}.
local function where_get(uuid)
  local raw = redis.call('HGET', WHERE_KEY, uuid)
  if raw then
    return cjson.decode(raw)
  end
  return nil
end

local function where_put(uuid, rec)
  if #rec.c == 0 then
    redis.call('HDEL', WHERE_KEY, uuid)
  else
    redis.call('HSET', WHERE_KEY, uuid, cjson.encode(rec))
  end
end

local function where_remove(uuid, channel)
  local rec = where_get(uuid)
  if not rec then
    return
  end
  for i = #rec.c, 1, -1 do
    if rec.c[i] == channel then
      table.remove(rec.c, i)
    end
  end
  where_put(uuid, rec)
end

-- Removes one occupant and reports it; the caller has checked it is there.
local function remove_occupant(uuid, channel, occ_key, state_key, log_key, action)
  redis.call('ZREM', occ_key, uuid)
  redis.call('HDEL', state_key, uuid)
  log_presence(log_key, action, uuid, occ_key, nil)
end
