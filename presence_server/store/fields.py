"""Data the Lua scripts write and Python reads, named once: log entry fields, counters, wake-ups.

Scripts get these names from a header generated from this module (``lua_header``), so a field is
spelt in one place. Values in Redis are strings; "JSON" below means JSON text. Log entries have
the id ``<timetoken>-0``; a presence log (``KeysetKeys.log``, delivered on ``<channel>-pnpres``) holds
one entry per presence event, a message log (``KeysetKeys.messages``) one per message or signal.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import math
from typing import Any, Final, cast

import orjson

# -- presence log entries -------------------------------------------------------------------------
EVENT_ACTION: Final = "a"  # "join", "leave", "timeout", "state-change" or "interval"
EVENT_UUID: Final = "u"  # who joined, left, timed out or changed state (absent on interval events)
EVENT_OCCUPANCY: Final = "o"  # occupancy right after the event (integer)
EVENT_TIMESTAMP: Final = "s"  # when, in Unix seconds (integer)
EVENT_DATA: Final = "d"  # the user's state (JSON object): on joins that have one, and on state changes
# Interval events only (docs/protocol.md 2.2.5): the net changes since the last one, or "refresh here_now".
EVENT_JOINED: Final = "j"  # JSON list of uuids that joined
EVENT_LEFT: Final = "l"  # JSON list of uuids that left
EVENT_TIMED_OUT: Final = "t"  # JSON list of uuids that timed out
EVENT_REFRESH: Final = "r"  # "1": too many changes to list; the client should ask here_now

# -- webhook stream entries (``KeysetKeys.hooks``): the EVENT_* fields above, and these -----------
# EVENT_ACTION there is also "active" or "inactive": a channel's occupancy went from 0 to 1, or to 0.
HOOK_CHANNEL: Final = "c"  # the channel
HOOK_AT: Final = "w"  # when the event happened, in ms (EVENT_TIMESTAMP in seconds is what the POST carries)

# -- message log entries ---------------------------------------------------------------------------
MESSAGE_BODY: Final = "m"  # the message (JSON), as published
MESSAGE_PUBLISHER: Final = "i"  # the publisher's uuid, when it gave one
MESSAGE_META: Final = "u"  # the publish call's meta (JSON), when given
MESSAGE_KIND: Final = "e"  # the message type (integer): 1 for a signal; absent for a plain message
MESSAGE_CUSTOM_TYPE: Final = "cmt"  # the publisher's custom message type, when given
MESSAGE_LIVE_ONLY: Final = "n"  # "1": published with store=0: delivered, never in history (nor are signals)
MESSAGE_EXPIRES: Final = "x"  # when the message leaves history (ms), when its own ttl is shorter than retention
# With history on: how many messages history shows in the log up to this one, this one included
# (message counts subtract two ranks, then what left history early: KeysetKeys.history_gone, history_ttl).
MESSAGE_RANK: Final = "c"

# -- fields of the keyset counters hash (``KeysetKeys.counters``) ----------------------------------
COUNTER_OCCUPANTS: Final = "occupants"  # present (uuid, channel) pairs, expired-but-unswept included
# Webhook events not kept because the keyset's webhook stream was full (taken, and counted as dropped,
# by the process that delivers the keyset's webhooks).
COUNTER_HOOKS_LOST: Final = "hooks_lost"

# -- wake-up messages on the shard channels (``KeysetKeys.wake``, ``keys.clock_offset``), JSON objects
WAKE_KEYSET: Final = "k"  # the subscribe key
WAKE_NAMES: Final = "n"  # names whose logs grew (``ch``, ``ch-pnpres``) or group markers; may be absent
# A name in WAKE_NAMES made of this and a group name: the group's channels changed.
GROUP_CHANGED: Final = "\x00group:"
WAKE_LEFT: Final = "l"  # a uuid that left channels of the keyset (its refresh memo must go)
WAKE_RESET: Final = "x"  # present (true) when the whole keyset was reset
WAKE_REVOKED: Final = "r"  # an Access Manager token revoked in the keyset (its id)
# A publish's entry: [channel, the keyset's timetoken before it, its timetoken, field, value, ...], so that
# the polls it completes need no read (longpoll.py); left out when its names and values pass MAX_WAKE_ENTRY_BYTES.
WAKE_ENTRY: Final = "e"
MAX_WAKE_ENTRY_BYTES: Final = 8192
WAKE_CLOCK: Final = "clock"  # alone in its message: the admin clock's new offset (seconds)
WAKE_FAULTS: Final = "faults"  # alone in its message, on the clock's channel: the fault rules changed

# -- occupants (``KeysetKeys.occupants``, and the fields of ``KeysetKeys.state``) --------------------
# A uuid's member there is the uuid itself, except that a canonical lowercase uuid (36 characters, the
# uuid4 most apps use) is written in 23: MEMBER_MARK and the base64 of its 16 bytes, without padding.
# Redis keeps a member of at most 30 bytes in a 32-byte allocation, one of 36 in a 48-byte one, so
# this takes 16 bytes off every present user. A uuid that itself starts with MEMBER_MARK gets a second
# one in front, so no two uuids share a member. Events, deltas and webhooks carry the uuid itself.
MEMBER_MARK: Final = "~"
MEMBER_DIGITS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"  # base64's, in order

# An occupant's score is its deadline in ms less code / DEADLINE_CODES, the code of the presence
# timeout the uuid asked for (0 <= code < DEADLINE_CODES): the fraction remembers that timeout at no
# memory cost, and comparisons with a time in whole ms are unchanged (score > now exactly when the
# deadline is). Code 0 is the default timeout, 1 to TIMEOUT_IN_KEY - 1 that many seconds;
# TIMEOUT_IN_KEY any other timeout (a fraction of a second, longer), which then also goes to the uuid's
# own key (``KeysetKeys.uuid_timeout``). A double holds the fraction exactly while the deadline is below
# DEADLINE_CODED_BELOW (2^42 ms, in the year 2109): beyond it every timeout but the default takes the key.
DEADLINE_CODES: Final = 2048
TIMEOUT_IN_KEY: Final = DEADLINE_CODES - 1
DEADLINE_CODED_BELOW: Final = 2**42


def member(uuid: str) -> str:
    """The uuid's member in a channel's occupants and state (see MEMBER_MARK)."""
    if len(uuid) == 36 and uuid[8] == uuid[13] == uuid[18] == uuid[23] == "-":
        # Canonical when the rest is 32 lowercase hex digits: what they encode, written back in hex,
        # gives them again (no other dash, no capital, no whitespace, which fromhex skips). Every
        # heartbeat asks this; a regular expression took a third of the time.
        digits = uuid.replace("-", "")
        try:
            raw = bytes.fromhex(digits)
        except ValueError:
            raw = b""
        if len(raw) == 16 and raw.hex() == digits:
            return MEMBER_MARK + binascii.b2a_base64(raw, newline=False)[:22].decode()
    if uuid.startswith(MEMBER_MARK):
        return MEMBER_MARK + uuid
    return uuid


def uuid_of(member: str) -> str:
    """The uuid a member of the occupants or state stands for (the reverse of ``member``)."""
    if not member.startswith(MEMBER_MARK):
        return member
    if member.startswith(MEMBER_MARK, 1):
        return member[1:]
    digits = base64.b64decode(member[1:] + "==").hex()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def timeout_code(timeout: float, default: float, deadline_ms: int) -> int:
    """The code a deadline of ``deadline_ms`` carries for a timeout the uuid sent (see DEADLINE_CODES)."""
    if timeout == default:
        return 0
    if float(timeout).is_integer() and 1 <= timeout < TIMEOUT_IN_KEY and deadline_ms < DEADLINE_CODED_BELOW:
        return int(timeout)
    return TIMEOUT_IN_KEY


# The decimals of 1 - code / DEADLINE_CODES (1/2048 is 48828125e-11), for deadline_text: all of
# them, and four. From SHORT_SCORES_FROM ms (2^40, the year 2004) on, the doubles next to a score are
# at least 2^-13 (0.000122) away from it, so four decimals (at most 0.00005 off) still name it
# exactly: 17 digits instead of up to 24, and Redis parses each score sent (strtod) about a
# fifth faster.
_FRACTIONS: Final = [""] + [
    f".{(DEADLINE_CODES - code) * 48828125:011d}".rstrip("0") for code in range(1, DEADLINE_CODES)
]
_SHORT_FRACTIONS: Final = [""] + [
    f"{(DEADLINE_CODES - code) / DEADLINE_CODES:.4f}"[1:].rstrip("0") for code in range(1, DEADLINE_CODES)
]
SHORT_SCORES_FROM: Final = 2**40


def deadline_text(deadline_ms: int, code: int) -> str:
    """An occupant's score for a deadline (ms, below DEADLINE_CODED_BELOW unless code 0) and a timeout
    code, as decimal text that parses to exactly deadline - code / DEADLINE_CODES."""
    if not code:
        return str(deadline_ms)
    return f"{deadline_ms - 1}{(_SHORT_FRACTIONS if deadline_ms > SHORT_SCORES_FROM else _FRACTIONS)[code]}"


def deadline_of(score: float) -> int:
    """An occupant's deadline (ms) from its score."""
    return math.ceil(score)


_LUA_TABLES: dict[str, dict[str, str | int]] = {
    "EVENT": {
        "action": EVENT_ACTION,
        "uuid": EVENT_UUID,
        "occupancy": EVENT_OCCUPANCY,
        "timestamp": EVENT_TIMESTAMP,
        "data": EVENT_DATA,
        "join": EVENT_JOINED,
        "leave": EVENT_LEFT,
        "timeout": EVENT_TIMED_OUT,
        "refresh": EVENT_REFRESH,
    },
    "HOOK": {"channel": HOOK_CHANNEL, "at": HOOK_AT},
    "COUNTER": {"occupants": COUNTER_OCCUPANTS, "hooks_lost": COUNTER_HOOKS_LOST},
    "WAKE": {
        "keyset": WAKE_KEYSET,
        "names": WAKE_NAMES,
        "left": WAKE_LEFT,
        "entry": WAKE_ENTRY,
        "entry_max": MAX_WAKE_ENTRY_BYTES,
    },
    "MESSAGE": {"kind": MESSAGE_KIND, "live_only": MESSAGE_LIVE_ONLY, "rank": MESSAGE_RANK},
    "OCC": {
        "mark": MEMBER_MARK,
        "digits": MEMBER_DIGITS,
        "codes": DEADLINE_CODES,
        "in_key": TIMEOUT_IN_KEY,
        "exact_below": DEADLINE_CODED_BELOW,
    },
}


@functools.cache
def lua_header(tables: tuple[str, ...] = tuple(_LUA_TABLES)) -> str:
    """Lua tables of the names above (``EVENT.action`` is ``'a'``), prepended to every script; a script
    that needs only some of them (refresh.lua) names them."""
    lines = ["-- Generated from presence_server/store/fields.py: the names of the data scripts write."]
    for table in tables:
        names = _LUA_TABLES[table]
        body = ", ".join(f"{name} = {_lua_value(value)}" for name, value in names.items())
        lines.append(f"local {table} = {{{body}}}")
    return "\n".join(lines) + "\n"


def _lua_value(value: str | int) -> str:
    return str(value) if isinstance(value, int) else f"'{value}'"


_INTERVAL_LISTS = ((EVENT_JOINED, "join"), (EVENT_LEFT, "leave"), (EVENT_TIMED_OUT, "timeout"))


def presence_payload(fields: dict[str, str]) -> dict[str, Any]:
    """A presence log entry in PubNub's names: the ``d`` of its ``-pnpres`` delivery (docs/protocol.md
    2.2.5), which the webhooks and the inspector's feed carry too. Integer occupancy and timestamp, string
    action: Python's subscribe loop dies otherwise. State and uuid lists are the stored JSON text as is."""
    payload: dict[str, Any] = {
        "action": fields[EVENT_ACTION],
        "timestamp": int(fields[EVENT_TIMESTAMP]),
        "occupancy": int(fields[EVENT_OCCUPANCY]),
    }
    if EVENT_UUID in fields:
        payload["uuid"] = fields[EVENT_UUID]
    if EVENT_DATA in fields:
        payload["data"] = orjson.Fragment(fields[EVENT_DATA])
    if fields.get(EVENT_REFRESH) == "1":
        payload["here_now_refresh"] = True
    for field, name in _INTERVAL_LISTS:
        if field in fields:
            payload[name] = orjson.Fragment(fields[field])
    return payload


@dataclasses.dataclass(frozen=True, slots=True)
class LogEntry:
    """One entry of a channel's presence log, as read back by ``PresenceStore.read_log``."""

    timetoken: str
    fields: dict[str, str]

    @property
    def action(self) -> str:
        return self.fields[EVENT_ACTION]

    @property
    def uuid(self) -> str:
        return self.fields[EVENT_UUID]

    @property
    def occupancy(self) -> int:
        return int(self.fields[EVENT_OCCUPANCY])

    @property
    def timestamp(self) -> int:
        return int(self.fields[EVENT_TIMESTAMP])

    @property
    def data(self) -> dict[str, Any] | None:
        raw = self.fields.get(EVENT_DATA)
        return None if raw is None else cast("dict[str, Any]", orjson.loads(raw))
