-- publish.lua: append one message to a channel's message log.
-- KEYS[FIRST_CHANNEL_KEY] the channel's message log (the four per-channel keys are not used).
-- Own arguments (arg(i), after common.lua's): 1 channel, then the entry's fields (MESSAGE_* of
-- presence_server/store/fields.py) as name, value pairs. Returns the message's timetoken.
local channel = arg(1)
local fields = {}
for i = SHARED_ARGS + 2, #ARGV do
  table.insert(fields, ARGV[i])
end
local tt = append(KEYS[FIRST_CHANNEL_KEY], channel, channel, fields)
publish_wakes()
return tt
