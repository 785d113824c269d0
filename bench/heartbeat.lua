-- wrk script: heartbeats from many distinct uuids on a few channels, one request per call.
-- Arguments after `--`: subscribe key, number of uuids, number of channels, presence timeout (s),
-- and optionally an `auth` value (a token, already percent-encoded) sent with every heartbeat.
-- uuid n is `%08x-0000-4000-8000-%012x` of n (bench.live.populate builds the same text) and
-- heartbeats channel `room-<n mod channels>`. n walks the uuids in a scattered order (a step
-- coprime to the count), so every uuid is hit once per lap and consecutive requests differ.

local sub_key, users, channels, timeout = "bench", 10000, 4, 300
local auth = ""
local step = 7919
local n = 0

function init(args)
  sub_key = args[1] or sub_key
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
  local u = (n * step) % users
  local path = string.format(
    "/v2/presence/sub-key/%s/channel/room-%d/heartbeat?heartbeat=%d&uuid=%08x-0000-4000-8000-%012x%s",
    sub_key, u % channels, timeout, u, u, auth)
  return wrk.format("GET", path)
end
