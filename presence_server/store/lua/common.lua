-- common.lua: prepended to every mutating script at registration (after the generated header and
-- deadlines.lua).
-- Shared calling convention of those scripts:
--   KEYS[1] timetoken counter, KEYS[2] due index, KEYS[3] the uuid's own timeout key (heartbeat
--   only, for a timeout no deadline code tells; another key of the keyset elsewhere), KEYS[4]
--   interval index, KEYS[5] channel-name index, KEYS[6] keyset counters (hash), KEYS[7] webhook
--   stream, KEYS[8] channels announced active to webhooks (set), then four keys per channel:
--   occupants (zset), state (hash), presence log (stream), interval deltas (hash).
--   ARGV[1] now (ms), ARGV[2] now as a timetoken (decimal string), ARGV[3] now (unix seconds),
--   ARGV[4] log length bound, ARGV[5] backstop expiry (s), ARGV[6] subscribe key, ARGV[7] wake-up
--   pub/sub channel, ARGV[8] announce max, ARGV[9] interval (ms), ARGV[10] most entries the webhook
--   stream holds (0: webhooks off); script-specific arguments follow,
--   read with arg(i) (the i-th of the script's own), so a new shared argument renumbers no script.
-- Scripts never read the clock: time always comes from the caller.
-- Field names of log entries, counters and wake-ups (EVENT.*, COUNTER.*, WAKE.*) come from the
-- header generated from presence_server/store/fields.py, where each is described.

local TT_KEY, DUE_KEY, UUID_TIMEOUT_KEY, IVL_KEY, NAMES_KEY = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local COUNTERS_KEY, HOOKS_KEY, HOOKS_ACTIVE_KEY = KEYS[6], KEYS[7], KEYS[8]
local NOW_MS = tonumber(ARGV[1])
local NOW_TT = ARGV[2]
local NOW_S = ARGV[3]
local LOG_SIZE = ARGV[4]
local BACKSTOP = ARGV[5]
local SUB_KEY = ARGV[6]
local WAKE_CHANNEL = ARGV[7]  -- the keyset's shard channel (SPUBLISH: in the keyset's slot)
local ANNOUNCE_MAX = tonumber(ARGV[8])
local INTERVAL_MS = tonumber(ARGV[9])
local HOOKS_MAX = tonumber(ARGV[10])
local SHARED_ARGS = 10

-- The i-th argument of the script's own, after the shared ones.
local function arg(i)
  return ARGV[SHARED_ARGS + i]
end
local PNPRES = '-pnpres'
local FIRST_CHANNEL_KEY = 9
local KEYS_PER_CHANNEL = 4

local function channel_count()
  return (#KEYS - FIRST_CHANNEL_KEY + 1) / KEYS_PER_CHANNEL
end

-- The four keys of the i-th channel: occupants, state, presence log, interval deltas.
local function channel_keys(i)
  local base = FIRST_CHANNEL_KEY + (i - 1) * KEYS_PER_CHANNEL
  return KEYS[base], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
end

-- Timetokens are 17-digit integers, beyond a Lua double's exact range, so they are handled as
-- decimal strings: compared by length then text, and incremented by Redis itself (64-bit INCR).
-- Strictly increasing across the keyset whatever the callers' clocks do. Also returns the keyset's
-- timetoken before this one (nil when there was none, or none usable): no entry of the keyset has a
-- timetoken between the two.
local function next_timetoken()
  local last = redis.call('GET', TT_KEY)
  if last and #last > 19 then
    -- Longer than any stream id (an older server's clock went too far): no entry ever used it.
    last = nil
  end
  if last and (#last > #NOW_TT or (#last == #NOW_TT and last >= NOW_TT)) then
    redis.call('INCR', TT_KEY)
    return redis.call('GET', TT_KEY), last
  end
  redis.call('SET', TT_KEY, NOW_TT)
  return NOW_TT, last
end

-- Names whose logs grew in this script; published once at the end so waiting polls re-read.
local woken, woken_list = {}, {}
local function wake(name)
  if not woken[name] then
    woken[name] = true
    table.insert(woken_list, name)
  end
end

-- `left`: the uuid that left, when the script is a leave; every process then forgets what it
-- remembers of that user (its subscribe refresh memo), so the wake-up goes out even with no names.
-- `entry`: the one entry the script appended, as {channel, previous timetoken, timetoken, field,
-- value, ...}, for the polls that can be answered with it without reading (publish.lua).
local function publish_wakes(left, entry)
  if #woken_list == 0 and not left then
    return
  end
  local wake = {[WAKE.keyset] = SUB_KEY}
  if #woken_list > 0 then
    wake[WAKE.names] = woken_list
  end
  if left then
    wake[WAKE.left] = left
  end
  if entry then
    wake[WAKE.entry] = entry
  end
  redis.call('SPUBLISH', WAKE_CHANNEL, cjson.encode(wake))
end

-- Appends an entry to a log, in the same script as the change it reports. `name` is the name the
-- entry is delivered on (`ch` for messages, `ch-pnpres` for presence); `channel` the base channel,
-- indexed so wildcard subscriptions can find it.
-- `maxlen` bounds the log's length (LOG_SIZE when not given).
-- Returns the entry's timetoken and the keyset's one before it (see next_timetoken).
local function append(log_key, name, channel, fields, maxlen)
  local tt, previous = next_timetoken()
  redis.call('XADD', log_key, 'MAXLEN', '~', maxlen or LOG_SIZE, tt .. '-0', unpack(fields))
  redis.call('EXPIRE', log_key, BACKSTOP)
  redis.call('ZADD', NAMES_KEY, 0, channel)
  wake(name)
  return tt, previous
end

local function occupancy(occ_key)
  return redis.call('ZCOUNT', occ_key, '(' .. NOW_MS, '+inf')
end

-- Whether this script put a channel in interval mode (the sweeper must then look at the keyset).
local interval_added = false

-- Presence webhooks (presence_server/webhooks.py): with them on, each presence event also goes to
-- the keyset's webhook stream, with its channel, in the same script as the change it reports. A full
-- stream (no process has delivered for a long while) keeps nothing more, and counts what it lost.
local function hook(channel, fields)
  if redis.call('XLEN', HOOKS_KEY) >= HOOKS_MAX then
    redis.call('HINCRBY', COUNTERS_KEY, COUNTER.hooks_lost, 1)
    return
  end
  redis.call('XADD', HOOKS_KEY, '*', HOOK.channel, channel, HOOK.at, NOW_MS, unpack(fields))
  redis.call('EXPIRE', HOOKS_KEY, BACKSTOP)
end

-- A channel's `active` webhook when its occupancy leaves 0, `inactive` when it comes back to 0. The
-- set of active channels makes them alternate, whatever order joins and lapsed users come in.
local function hook_occupancy(channel, count)
  if count > 0 then
    if redis.call('SADD', HOOKS_ACTIVE_KEY, channel) == 1 then
      redis.call('EXPIRE', HOOKS_ACTIVE_KEY, BACKSTOP)
      hook(channel, {EVENT.action, 'active', EVENT.timestamp, NOW_S})
    end
  elseif redis.call('SREM', HOOKS_ACTIVE_KEY, channel) == 1 then
    hook(channel, {EVENT.action, 'inactive', EVENT.timestamp, NOW_S})
  end
end

-- Above ANNOUNCE_MAX occupants, and until the interval event that follows, joins, leaves and
-- timeouts are not announced one by one: they are kept as net deltas for the channel's next
-- interval event (emitted by sweep.lua), so a listener that applies the events it got always ends
-- with who is here. A join cancels a pending leave or timeout of the same uuid and the reverse, so
-- nobody is listed as both.
local function keep_delta(channel, delta_key, action, uuid)
  local cancelled
  if action == 'join' then
    cancelled = redis.call('HDEL', delta_key, 'leave:' .. uuid, 'timeout:' .. uuid)
  else
    cancelled = redis.call('HDEL', delta_key, 'join:' .. uuid)
  end
  if cancelled == 0 then
    redis.call('HSET', delta_key, action .. ':' .. uuid, 1)
    redis.call('EXPIRE', delta_key, BACKSTOP)
  end
  if redis.call('ZADD', IVL_KEY, 'NX', NOW_MS + INTERVAL_MS, channel) == 1 then
    interval_added = true
  end
end

-- One presence event: in the log (or the interval deltas), and to the webhooks. Webhooks get a
-- channel's `active` before the join that made it and `inactive` after the leave or timeout.
local function log_presence(channel, occ_key, log_key, delta_key, action, uuid, data)
  local count = occupancy(occ_key)
  local hooked = HOOKS_MAX > 0
  local moves = action ~= 'state-change'
  if hooked and moves and count > 0 then
    hook_occupancy(channel, count)
  end
  if moves and (count > ANNOUNCE_MAX or redis.call('ZSCORE', IVL_KEY, channel)) then
    keep_delta(channel, delta_key, action, uuid)
  else
    local fields = {EVENT.action, action, EVENT.uuid, uuid, EVENT.occupancy, count, EVENT.timestamp, NOW_S}
    if data then
      table.insert(fields, EVENT.data)
      table.insert(fields, data)
    end
    append(log_key, channel .. PNPRES, channel, fields)
    if hooked then
      hook(channel, fields)
    end
  end
  if hooked and moves and count == 0 then
    hook_occupancy(channel, 0)
  end
end

-- The due index holds, for each occupied channel, a time (whole ms) no later than its earliest
-- deadline, so the sweeper visits only channels with someone (possibly) due. Heartbeats only lower
-- it; this puts the exact earliest deadline in place. A channel nobody occupies leaves the index
-- and loses its state hash too: state of a user who never joined is kept only while the channel
-- has occupants (or until the backstop).
local function refresh_due(channel, occ_key, state_key)
  local first = redis.call('ZRANGE', occ_key, 0, 0, 'WITHSCORES')
  if first[2] then
    redis.call('ZADD', DUE_KEY, (deadline_code(tonumber(first[2]))), channel)
    -- Refreshes renew neither backstop expiry: both are renewed here, at least once per longest
    -- timeout while anyone is present (a channel with occupants always has a due entry), so that
    -- neither the occupants nor their state are lost with the backstop, however long they stay.
    redis.call('EXPIRE', occ_key, BACKSTOP)
    redis.call('EXPIRE', state_key, BACKSTOP)
    return
  end
  redis.call('ZREM', DUE_KEY, channel)
  redis.call('DEL', state_key)
end

-- The uuid a member of the occupants or state stands for (fields.py: member, uuid_of).
local member_digits
local function uuid_of(member)
  if string.sub(member, 1, 1) ~= OCC.mark then
    return member
  end
  if string.sub(member, 2, 2) == OCC.mark then
    return string.sub(member, 2)
  end
  if not member_digits then
    member_digits = {}
    for i = 1, 64 do
      member_digits[string.byte(OCC.digits, i)] = i - 1
    end
  end
  -- Two base64 digits are three hex digits: 11 pairs give the 32 of the uuid and a padding 0.
  local hex = {}
  for i = 2, 22, 2 do
    local high, low = string.byte(member, i, i + 1)
    hex[#hex + 1] = string.format('%03x', 64 * member_digits[high] + member_digits[low])
  end
  hex = table.concat(hex)
  local sub = string.sub
  return sub(hex, 1, 8) .. '-' .. sub(hex, 9, 12) .. '-' .. sub(hex, 13, 16) .. '-' .. sub(hex, 17, 20)
    .. '-' .. sub(hex, 21, 32)
end

-- Removes one occupant (its member, and the uuid it stands for) and reports it; the caller has
-- checked it is there.
local function remove_occupant(i, channel, member, uuid, action)
  local occ_key, state_key, log_key, delta_key = channel_keys(i)
  redis.call('ZREM', occ_key, member)
  redis.call('HINCRBY', COUNTERS_KEY, COUNTER.occupants, -1)
  redis.call('HDEL', state_key, member)
  log_presence(channel, occ_key, log_key, delta_key, action, uuid, nil)
end
