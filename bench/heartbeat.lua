-- wrk script: heartbeats from many distinct uuids on a few channels, one request per call.
-- Arguments after `--`: the subscribe key (or a comma list of them), number of uuids (per keyset),
-- number of channels, presence timeout (s), and optionally an `auth` value (a token, already
-- percent-encoded) sent with every heartbeat.
-- uuid n is `%08x-0000-4000-8000-%012x` of n (bench.live.populate builds the same text) and
-- heartbeats channel `room-<n mod channels>`. n walks the uuids in a scattered order (a step
-- coprime to the count), so every uuid is hit once per lap and consecutive requests differ. With
-- K keysets, request n goes to keyset n mod K, so every keyset gets the same share.

local sub_keys = {"bench"}
local users, channels, timeout = 10000, 4, 300
local auth = ""
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
  if args[5] and args[5] ~= "" then
    auth = "&auth=" .. args[5]
  end
  if users % step == 0 then
    step = 1
  end
end

function request()
  n = n + 1
  local k = #sub_keys
  local u = (math.floor(n / k) * step) % users
  local path = string.format(
    "/v2/presence/sub-key/%s/channel/room-%d/heartbeat?heartbeat=%d&uuid=%08x-0000-4000-8000-%012x%s",
    sub_keys[n % k + 1], u % channels, timeout, u, u, auth)
  return wrk.format("GET", path)
end
