-- group_add.lua: add channels to a channel group, refusing to grow it past its cap.
-- KEYS[1] the group's set, KEYS[2] the keyset's set of groups.
-- ARGV[1] group name, ARGV[2] cap, then the channels. Returns the group size, or -1 when refused.
local added = redis.call('SMISMEMBER', KEYS[1], unpack(ARGV, 3))
local new = 0
for _, is_member in ipairs(added) do
  if is_member == 0 then
    new = new + 1
  end
end
if redis.call('SCARD', KEYS[1]) + new > tonumber(ARGV[2]) then
  return -1
end
redis.call('SADD', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
return redis.call('SCARD', KEYS[1])
