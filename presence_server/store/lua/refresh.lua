-- refresh.lua: the heartbeat most calls are, for several uuids of one keyset at once. A uuid present
-- (not lapsed) on every channel of its heartbeat, keeping the timeout its deadlines hold (one a code
-- tells) and sending no state, only has its deadlines moved on: this does that, as heartbeat.lua
-- would, without common.lua's prelude and keys, and for many heartbeats in one call. Any other
-- heartbeat is left untouched and reported: the caller then runs heartbeat.lua for it, which
-- re-reads everything. Each heartbeat is atomic on its own, as in heartbeat.lua.
-- KEYS[1] due index, KEYS[2] interval index, then each heartbeat's occupants keys, in order.
-- ARGV[1] backstop expiry (s), ARGV[2] default timeout (s), then per heartbeat: now (ms), its
-- member (fields.py: member), the code of the timeout sent (fields.py: timeout_code; '' for none:
-- the one held), how many channels n, then the n channel names.
-- Returns per heartbeat 1 (done) or 0 (left for heartbeat.lua), then when the sweeper must next
-- look at the keyset ('' unless that moved earlier).
local backstop, default_ms = ARGV[1], math.floor(tonumber(ARGV[2]) * 1000)
local done, earlier = {}, false
local key, arg = 3, 3

-- The code of the timeout one heartbeat keeps, or nil when heartbeat.lua must serve it.
local function held_code(now, member, sent, n)
  local code = sent ~= '' and tonumber(sent) or nil
  for i = key, key + n - 1 do
    local score = redis.pcall('ZSCORE', KEYS[i], member)
    if type(score) ~= 'string' then
      return nil  -- a join (or a key of another type: heartbeat.lua reports the error)
    end
    score = tonumber(score)
    if score <= now then
      return nil  -- lapsed: a timeout, then a join
    end
    local _, held = deadline_code(score)
    if held == OCC.in_key or (code and held ~= code) then
      return nil  -- the timeout is in the uuid's key, changes, or differs between the channels
    end
    code = held
  end
  return code
end

-- Each channel's due entry, all read in one ZMSCORE, and each occupants key's backstop expiry, set
-- once per call.
local channels, due = {}, {}
do
  local at = 3
  while at <= #ARGV do
    local n = tonumber(ARGV[at + 3])
    for i = at + 4, at + 3 + n do
      if due[ARGV[i]] == nil then
        due[ARGV[i]] = false
        channels[#channels + 1] = ARGV[i]
      end
    end
    at = at + 4 + n
  end
  local found = redis.call('ZMSCORE', KEYS[1], unpack(channels))
  for i = 1, #channels do
    due[channels[i]] = found[i] and tonumber(found[i]) or false
  end
end
local expiring = {}
local function move_on(occ_key, channel, member, score, deadline)
  redis.call('ZADD', occ_key, score, member)
  if not expiring[occ_key] then
    expiring[occ_key] = true
    redis.call('EXPIRE', occ_key, backstop)
  end
  -- Only ever lowered, as in heartbeat.lua: a refresh finds its channel's entry at or below its
  -- old deadline, unless something removed it.
  if not due[channel] or deadline < due[channel] then
    redis.call('ZADD', KEYS[1], 'LT', deadline, channel)
    due[channel], earlier = deadline, true
  end
end

while arg <= #ARGV do
  local now, member, n = tonumber(ARGV[arg]), ARGV[arg + 1], tonumber(ARGV[arg + 3])
  local code = held_code(now, member, ARGV[arg + 2], n)
  local deadline = code and now + (code == 0 and default_ms or code * 1000)
  if code and (code == 0 or deadline < OCC.exact_below) then
    local score = deadline_score(deadline, code)
    for i = 0, n - 1 do
      move_on(KEYS[key + i], ARGV[arg + 4 + i], member, score, deadline)
    end
    done[#done + 1] = 1
  else
    done[#done + 1] = 0
  end
  key, arg = key + n, arg + 4 + n
end
done[#done + 1] = earlier and keyset_next(KEYS[1], KEYS[2]) or ''
return done
