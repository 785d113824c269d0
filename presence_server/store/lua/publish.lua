-- publish.lua: append one message to a channel's message log (which history reads too).
-- KEYS[FIRST_CHANNEL_KEY] the channel's message log, then its history_gone and history_ttl sets and
-- its history_rank counter (the four per-channel keys of common.lua are not used).
-- Own arguments (arg(i), after common.lua's): 1 channel, 2 the log's length bound, 3 the oldest
-- timetoken history keeps, 17 digits ("" when history is off), 4 seconds the log lives unwritten,
-- 5 "1" when history shows the message, 6 when it leaves history by its own ttl (ms, or ""), then the
-- entry's fields (MESSAGE_* of presence_server/store/fields.py) as name, value pairs. Returns the
-- message's timetoken. The wake-up carries the entry (common.lua publish_wakes).
local channel, maxlen, oldest, lifetime = arg(1), arg(2), arg(3), tonumber(arg(4))
local shown, expires = arg(5) == '1', arg(6)
local log_key = KEYS[FIRST_CHANNEL_KEY]
local gone_key, ttl_key = KEYS[FIRST_CHANNEL_KEY + 1], KEYS[FIRST_CHANNEL_KEY + 2]
local rank_key = KEYS[FIRST_CHANNEL_KEY + 3]
local fields = {}
for i = SHARED_ARGS + 7, #ARGV do
  table.insert(fields, ARGV[i])
end
if oldest ~= '' then
  -- The message's rank: one more than the last shown message's, whatever was deleted since.
  local rank = shown and redis.call('INCR', rank_key) or tonumber(redis.call('GET', rank_key) or '0')
  redis.call('EXPIRE', rank_key, math.max(lifetime, tonumber(BACKSTOP)))
  table.insert(fields, MESSAGE.rank)
  table.insert(fields, string.format('%d', rank))
end
local tt, previous = append(log_key, channel, channel, fields, maxlen)
if oldest ~= '' then
  if shown and expires ~= '' then
    redis.call('ZADD', ttl_key, expires, tt)
  end
  -- Messages past their own ttl move to the gone set; what retention no longer keeps goes, on write.
  local expired = redis.call('ZRANGEBYSCORE', ttl_key, '-inf', NOW_MS)
  for _, member in ipairs(expired) do
    redis.call('ZADD', gone_key, 0, member)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', ttl_key, '-inf', NOW_MS)
  end
  redis.call('XTRIM', log_key, 'MINID', '~', oldest .. '-0')
  -- The gone set keeps what is newer than the log's oldest entry (the trim is approximate): ranks
  -- between entries still in the log count those too.
  if redis.call('EXISTS', gone_key) == 1 then
    local first = redis.call('XRANGE', log_key, '-', '+', 'COUNT', 1)[1]
    redis.call('ZREMRANGEBYLEX', gone_key, '-', '(' .. string.match(first[1], '^(%d+)'))
  end
  if lifetime > tonumber(BACKSTOP) then
    redis.call('EXPIRE', log_key, lifetime)
  end
  for _, key in ipairs({gone_key, ttl_key}) do
    if redis.call('EXISTS', key) == 1 then
      redis.call('EXPIRE', key, math.max(lifetime, tonumber(BACKSTOP)))
    end
  end
end
-- The wake-up carries the entry (unless it is long: every process of the keyset receives it), so that
-- a poll whose cursor is at or after the keyset's previous timetoken is answered without a read.
local entry = nil
if previous then
  local size = 0
  for _, value in ipairs(fields) do
    size = size + #value
  end
  if size <= WAKE.entry_max then
    entry = {channel, previous, tt, unpack(fields)}
  end
end
publish_wakes(nil, entry)
return tt
