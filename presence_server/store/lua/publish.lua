-- publish.lua: append one message to a channel's message log.
-- KEYS[7] the channel's message log (the four per-channel keys are not used).
-- ARGV[10] channel, then the entry's fields as name, value pairs. Returns the message's timetoken.
local fields = {}
for i = 11, #ARGV do
  table.insert(fields, ARGV[i])
end
local tt = append(KEYS[7], ARGV[10], ARGV[10], fields)
publish_wakes()
return tt
