-- deadlines.lua: how an occupant's score holds its deadline and the code of its presence timeout
-- (presence_server/store/fields.py, DEADLINE_CODES): prepended, after the generated header, to
-- common.lua's scripts and to refresh.lua.

-- The score of a deadline (ms, whole) with a timeout code, as text: every digit a double holds, so
-- Redis keeps the code exactly. From OCC.exact_below on, a double cannot hold it: the score is the
-- deadline alone, and stands for OCC.in_key (the timeout, if not the default, is in the uuid's key).
local function deadline_score(deadline, code)
  if deadline >= OCC.exact_below then
    return string.format('%.17g', deadline)
  end
  return string.format('%.17g', deadline - code / OCC.codes)
end

-- The deadline (ms) and the timeout code of a score (a number).
local function deadline_code(score)
  local deadline = math.ceil(score)
  if deadline >= OCC.exact_below then
    return deadline, OCC.in_key
  end
  return deadline, math.floor((deadline - score) * OCC.codes + 0.5)
end

-- When the sweeper must next look at a keyset: its earliest deadline or interval, '' for never.
local function keyset_next(due_key, ivl_key)
  local due = redis.call('ZRANGE', due_key, 0, 0, 'WITHSCORES')[2]
  local ivl = redis.call('ZRANGE', ivl_key, 0, 0, 'WITHSCORES')[2]
  if due and ivl then
    return tonumber(ivl) < tonumber(due) and ivl or due
  end
  return due or ivl or ''
end
