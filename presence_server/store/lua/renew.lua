-- renew.lua: the heartbeat most calls are, for several uuids of one keyset at once: a uuid present
-- (not lapsed) on every channel of its heartbeat, sending its presence timeout (one a code tells)
-- and no state. Its deadlines are moved on, as heartbeat.lua would, without common.lua's prelude and
-- keys and without reading them first. A heartbeat that sends no timeout is refresh.lua's (its
-- deadline depends on the timeout held); any other comes back named, and the caller runs
-- heartbeat.lua for it, which re-reads everything.
-- KEYS[1] due index, KEYS[2] interval index, then the occupants key of each of the call's c channels.
-- ARGV[1] the latest now (ms) of the call's heartbeats, then per channel three: its name (in the
-- order of the keys), the lowest deadline its pairs give, how many pairs it has (two characters, 48
-- plus each base-64 digit, as refresh.lua's positions: Redis parses no number for it); then each
-- channel's pairs, in that order: the score that gives the new deadline (fields.py: deadline_text),
-- the member (fields.py: member).
-- Returns the members left for heartbeat.lua, then when the sweeper must next look at the keyset
-- ('' unless that moved earlier).
--
-- Redis's cost is per channel: one ZCOUNT and one ZADD of the pairs as sent. The ZCOUNT counts the
-- channel's lapsed members (deadline not past the call's latest now): with none, every member the
-- ZADD XX finds present is a plain refresh, and its count of scores changed says whether it found
-- them all. A channel with lapsed members has its members read first, a short count has them read
-- after; a member absent or lapsed on any channel is not written on the channels after, and is left
-- for heartbeat.lua. For a heartbeat on several channels that is not all-or-nothing: channels before
-- the one it joins are already written, with the deadlines heartbeat.lua then writes again. The
-- timeout a deadline held is not read: heartbeat.lua too replaces it with the one sent.
local c, latest = #KEYS - 2, ARGV[1]
local latest_ms -- read only where a member's score is: each number parsed costs

-- The members absent from key or lapsed there: failed, and how many of the members they are.
local failed, any_failed = {}, false
local function unfit(key, members)
  local scores, unfit_here = redis.call('ZMSCORE', key, unpack(members)), 0
  latest_ms = latest_ms or tonumber(latest)
  for j = 1, #members do
    local score = scores[j]
    if not score or score + 0 <= latest_ms then
      failed[members[j]] = true
      any_failed = true
      unfit_here = unfit_here + 1
    end
  end
  return unfit_here
end
local function members_of(first, last)
  local members = {}
  for k = first + 1, last, 2 do
    members[#members + 1] = ARGV[k]
  end
  return members
end

-- The guards, before any write: a key of another type fails every heartbeat on it (heartbeat.lua
-- reports the error), lapsed members their own.
local byte = string.byte
local starts, counts, writable, at = {}, {}, {}, 2 + 3 * c
for i = 1, c do
  local high, low = byte(ARGV[1 + 3 * i], 1, 2)
  local n = (high - 48) * 64 + low - 48
  starts[i], counts[i] = at, n
  local lapsed = redis.pcall('ZCOUNT', KEYS[2 + i], '-inf', latest)
  writable[i] = type(lapsed) == 'number'
  if not writable[i] then
    for k = at + 1, at + 2 * n - 1, 2 do
      failed[ARGV[k]] = true
    end
    any_failed = true
  elseif lapsed > 0 then
    unfit(KEYS[2 + i], members_of(at, at + 2 * n - 1))
  end
  at = at + 2 * n
end

local due = {}
for i = 1, c do
  local first, n = starts[i], counts[i]
  local last = first + 2 * n - 1
  local key, pairs_sent = KEYS[2 + i], nil
  if any_failed and writable[i] then
    pairs_sent = {}
    for k = first, last, 2 do
      if not failed[ARGV[k + 1]] then
        pairs_sent[#pairs_sent + 1] = ARGV[k]
        pairs_sent[#pairs_sent + 1] = ARGV[k + 1]
      end
    end
  end
  local count = pairs_sent and #pairs_sent / 2 or n
  if writable[i] and count > 0 then
    local changed
    if pairs_sent then
      changed = redis.call('ZADD', key, 'XX', 'CH', unpack(pairs_sent))
    else
      changed = redis.call('ZADD', key, 'XX', 'CH', unpack(ARGV, first, last))
    end
    if changed < count then
      -- Someone absent (a join), or a score unchanged (the same deadline again): read which.
      if pairs_sent then
        local members = {}
        for k = 2, #pairs_sent, 2 do
          members[#members + 1] = pairs_sent[k]
        end
        count = count - unfit(key, members)
      else
        count = count - unfit(key, members_of(first, last))
      end
    end
    -- With a deadline written, the channel's due entry lowered (LT, as in heartbeat.lua) in one ZADD
    -- for all channels: not for a channel nobody is present on, whose entry heartbeat.lua adds (and
    -- then has the keyset's global entry lowered). A bound below what was written (a pair left out)
    -- only makes a sweep look early. The occupants' backstop expiry is renewed by the sweep's visits
    -- (common.lua: refresh_due).
    if count > 0 then
      due[#due + 1] = ARGV[3 * i]
      due[#due + 1] = ARGV[3 * i - 1]
    end
  end
end

local left = {}
for member in pairs(failed) do
  left[#left + 1] = member
end
local earlier = #due > 0 and redis.call('ZADD', KEYS[1], 'LT', 'CH', unpack(due)) > 0
left[#left + 1] = earlier and keyset_next(KEYS[1], KEYS[2]) or ''
return left
