-- wrk script: heartbeats from many distinct uuids spread over several keysets, one request per call.
-- Arguments after `--`: the subscribe keys (a comma list), number of uuids per keyset, number of
-- channels, presence timeout (s). Request n goes to keyset n mod K (K keysets), as uuid u of that
-- keyset (`%08x-0000-4000-8000-%012x` of u, as bench.live.populate builds it) on channel
-- `room-<u mod channels>`; u walks the uuids in a scattered order as bench/heartbeat.lua does, so
-- every keyset gets the same share and every uuid is hit once per lap.

local sub_keys = {"bench"}
local users, channels, timeout = 10000, 4, 300
local step = 7919
local n = 0

function init(args)
  if args[1] and args[1] ~= "" then
    sub_keys = {}
    for key in string.gmatch(args[1], "[^,]+") do
      table.insert(sub_keys, key)
    end
  end
  users = tonumber(args[2] or users)
  channels = tonumber(args[3] or channels)
  timeout = tonumber(args[4] or timeout)
  if users % step == 0 then
    step = 1
  end
end

function request()
  n = n + 1
  local k = #sub_keys
  local u = (math.floor(n / k) * step) % users
  local path = string.format(
    "/v2/presence/sub-key/%s/channel/room-%d/heartbeat?heartbeat=%d&uuid=%08x-0000-4000-8000-%012x",
    sub_keys[n % k + 1], u % channels, timeout, u, u)
  return wrk.format("GET", path)
end
