-- refresh.lua: the heartbeats that send no presence timeout, for several uuids of one keyset at
-- once. A uuid present (not lapsed) on every channel of its heartbeat, keeping the timeout its
-- deadlines hold (one a code tells) and sending no state, only has its deadlines moved on: this does
-- that, as heartbeat.lua would, without common.lua's prelude and keys, and for many heartbeats in one
-- call. (One that sends its timeout is renew.lua's, which need not read the deadlines first.) Any
-- other heartbeat is left untouched and reported: the caller then runs heartbeat.lua for it, which
-- re-reads everything. Each heartbeat is atomic on its own, as in heartbeat.lua.
-- KEYS[1] due index, KEYS[2] interval index, then the occupants key of each channel of the call.
-- ARGV[1] default timeout (s), ARGV[2] how many channels c, ARGV[3] the latest now (ms) of the
-- call's heartbeats, then the c channels' names (in the order of their keys), then per heartbeat
-- three: now (ms), its member (fields.py: member), and its channels' positions among the call's
-- (refreshes.py: places).
-- Returns per heartbeat 1 (done) or 0 (left for heartbeat.lua), then when the sweeper must next
-- look at the keyset ('' unless that moved earlier).
--
-- Redis's cost is per channel, not per heartbeat: each channel's members are read in one ZMSCORE
-- and moved on in one ZADD. Every number parsed costs (tonumber parses twice), so the positions come
-- as characters, and a uuid counts as lapsed once its deadline is not past the call's latest now:
-- heartbeat.lua then sorts out the rare one that sent its heartbeat a moment earlier. A uuid twice in
-- one call reads the same score both times, which is what the first left it (a refresh keeps the
-- code and only a lapse stops one), and the later deadline wins.
local default_ms, c = math.floor(tonumber(ARGV[1]) * 1000), tonumber(ARGV[2])
local latest_now = tonumber(ARGV[3])
local names, lowest = {}, {}
for i = 1, c do
  names[i] = ARGV[3 + i]
end

-- Each heartbeat's first argument; each channel's members; per channel of each heartbeat, in
-- order, its position among the call's and the member's among that channel's.
local byte = string.byte
local beats, members, on, index, slots = {}, {}, {}, {}, 0
for i = 1, c do
  members[i] = {}
end
for at = 4 + c, #ARGV, 3 do
  local member, places = ARGV[at + 1], ARGV[at + 2]
  beats[#beats + 1] = at
  for k = 1, #places, 2 do
    local high, low = byte(places, k, k + 1)
    local channel = (high - 48) * 64 + low - 48
    local list = members[channel]
    local j = #list + 1
    list[j] = member
    slots = slots + 1
    on[slots], index[slots] = channel, j
  end
end

-- Each channel's members' scores (false: the key is not a sorted set, which heartbeat.lua reports).
local scores = {}
for i = 1, c do
  local found = redis.pcall('ZMSCORE', KEYS[2 + i], unpack(members[i]))
  scores[i] = type(found) == 'table' and found
end

local codes, in_key, exact_below = OCC.codes, OCC.in_key, OCC.exact_below
local ceil, floor = math.ceil, math.floor
local done, moves, slot = {}, {}, 0
for b, at in ipairs(beats) do
  local n = #ARGV[at + 2] / 2
  -- The code of the timeout kept, or nil when heartbeat.lua must serve the heartbeat.
  local code = false
  for k = slot + 1, slot + n do
    local found = scores[on[k]]
    local score = found and found[index[k]]
    if not score then
      code = nil -- a join, or a key of another type
      break
    end
    score = score + 0
    local deadline = ceil(score)
    local held = deadline < exact_below and floor((deadline - score) * codes + 0.5) or in_key
    if score <= latest_now or held == in_key or (code and held ~= code) then
      code = nil -- lapsed (a timeout, then a join); the timeout is in the uuid's key, or differs
      break
    end
    code = held
  end
  local text
  if code then
    -- The timeout held: this deadline is worked out here.
    local deadline = tonumber(ARGV[at]) + (code == 0 and default_ms or code * 1000)
    if code ~= 0 and deadline >= exact_below then
      code = nil
    else
      text = deadline_score(deadline, code)
      for k = slot + 1, slot + n do
        local channel = on[k]
        if not lowest[channel] or deadline < lowest[channel] then
          lowest[channel] = deadline
        end
      end
    end
  end
  if code then
    local member = ARGV[at + 1]
    for k = slot + 1, slot + n do
      local list = moves[on[k]]
      if not list then
        list = {}
        moves[on[k]] = list
      end
      list[#list + 1] = text
      list[#list + 1] = member
    end
    done[b] = 1
  else
    done[b] = 0
  end
  slot = slot + n
end

-- The moves, one ZADD per channel, and each moved channel's due entry added or lowered in one more
-- (LT: only ever lowered, as in heartbeat.lua; a refresh finds its channel's entry at or below its
-- old deadline, unless something removed it). A bound below the deadlines written (one of a
-- heartbeat left to heartbeat.lua) only makes a sweep look early. The occupants' backstop expiry is
-- renewed by the sweep's visits (common.lua: refresh_due), which the due entry brings.
local due = {}
for i = 1, c do
  if moves[i] then
    redis.call('ZADD', KEYS[2 + i], unpack(moves[i]))
    due[#due + 1] = lowest[i]
    due[#due + 1] = names[i]
  end
end
local earlier = #due > 0 and redis.call('ZADD', KEYS[1], 'LT', 'CH', unpack(due)) > 0
done[#done + 1] = earlier and keyset_next(KEYS[1], KEYS[2]) or ''
return done
