-- wrk script: GET publishes of one message to a few channels, one request per call.
-- Arguments after `--`: publish key, subscribe key, number of channels, the message (JSON text,
-- already percent-encoded). Request n publishes to channel `pub-<n mod channels>` as uuid
-- `publisher-<n mod 1000>`, as an SDK sends its uuid with every publish.

local pub_key, sub_key, channels, message = "bench-pub", "bench", 10, "%22hello%22"
local n = 0

function init(args)
  pub_key = args[1] or pub_key
  sub_key = args[2] or sub_key
  channels = tonumber(args[3] or channels)
  message = args[4] or message
end

function request()
  n = n + 1
  local path = string.format(
    "/publish/%s/%s/0/pub-%d/0/%s?uuid=publisher-%d", pub_key, sub_key, n % channels, message, n % 1000)
  return wrk.format("GET", path)
end
