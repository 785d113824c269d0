-- group_remove.lua: remove channels from a channel group; a group left empty stops existing.
-- KEYS[1] the group's set, KEYS[2] the keyset's set of groups. ARGV[1] group name, then channels.
redis.call('SREM', KEYS[1], unpack(ARGV, 2))
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
