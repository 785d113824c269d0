-- hook_lease.lua: take, keep or give back the lease on delivering one keyset's webhooks. One process
-- holds it at a time, so the keyset's events go out in order; a holder that stops renewing it (gone,
-- or cut off from Redis) loses it when it runs out, and the next holder claims what it left pending.
-- KEYS[1] the lease (``<consumer> <until ms>``). ARGV[1] consumer, ARGV[2] now (ms), ARGV[3] lease
-- length (ms), ARGV[4] "1" to take or keep it, "0" to give it back.
-- Returns 0: another consumer holds it (or it was given back); 1: kept; 2: taken afresh.
local me, now, length = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local holder = redis.call('GET', KEYS[1])
local mine = false
if holder then
  local sep = string.find(holder, ' ', 1, true)
  mine = string.sub(holder, 1, sep - 1) == me
  if not mine and tonumber(string.sub(holder, sep + 1)) > now then
    return 0
  end
end
if ARGV[4] == '0' then
  if mine then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
-- The key's own expiry (Redis's clock) only cleans up: the lease's end is in the value, in the
-- server's clock, which tests move.
redis.call('SET', KEYS[1], me .. ' ' .. (now + length), 'PX', math.max(60000, 3 * length))
return mine and 1 or 2
