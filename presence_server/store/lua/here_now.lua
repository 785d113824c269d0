-- here_now.lua: occupancy and (a page of) occupants of several channels. Read-only: an occupant
-- past its deadline is not counted, but only the sweeper removes it.
-- KEYS: per channel: occupants (zset), state (hash).
-- ARGV[1] now (ms), ARGV[2] offset, ARGV[3] limit, ARGV[4] '1' to list uuids, ARGV[5] '1' for state.
-- Returns per channel {occupancy, {uuid...}, {state or false...}}.
local now, offset, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local with_uuids, with_state = ARGV[4] == '1', ARGV[5] == '1'
local out = {}
for i = 1, #KEYS / 2 do
  local occ_key, state_key = KEYS[2 * i - 1], KEYS[2 * i]
  local count = redis.call('ZCOUNT', occ_key, '(' .. now, '+inf')
  local uuids, states = {}, {}
  if with_uuids and limit > 0 and count > offset then
    uuids = redis.call('ZRANGEBYSCORE', occ_key, '(' .. now, '+inf', 'LIMIT', offset, limit)
    if with_state and #uuids > 0 then
      states = redis.call('HMGET', state_key, unpack(uuids))
    end
  end
  out[i] = {count, uuids, states}
end
return out
