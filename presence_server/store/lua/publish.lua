-- publish.lua: append one message to a channel's message log (which history reads too).
-- KEYS[FIRST_CHANNEL_KEY] the channel's message log (the four per-channel keys are not used).
-- Own arguments (arg(i), after common.lua's): 1 channel, 2 the log's length bound, 3 the oldest
-- timetoken history keeps ("" when history is off), 4 seconds the log lives unwritten, then the
-- entry's fields (MESSAGE_* of presence_server/store/fields.py) as name, value pairs. Returns the
-- message's timetoken.
local channel, maxlen, oldest, lifetime = arg(1), arg(2), arg(3), tonumber(arg(4))
local fields = {}
for i = SHARED_ARGS + 5, #ARGV do
  table.insert(fields, ARGV[i])
end
local log_key = KEYS[FIRST_CHANNEL_KEY]
local tt = append(log_key, channel, channel, fields, maxlen)
if oldest ~= '' then
  -- Retention, enforced on write: what is older than it goes (readers skip what is left of it).
  redis.call('XTRIM', log_key, 'MINID', '~', oldest .. '-0')
end
if lifetime > tonumber(BACKSTOP) then
  redis.call('EXPIRE', log_key, lifetime)
end
publish_wakes()
return tt
