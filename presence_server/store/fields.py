"""Data the Lua scripts write and Python reads, named once: log entry fields, counters, wake-ups.

Scripts get these names from a header generated from this module (``lua_header``), so a field is
spelt in one place. Values in Redis are strings; "JSON" below means JSON text. Log entries have
the id ``<timetoken>-0``; a presence log (``KeysetKeys.log``, delivered on ``<channel>-pnpres``) holds
one entry per presence event, a message log (``KeysetKeys.messages``) one per message or signal.
"""

from __future__ import annotations

import dataclasses
import functools
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
WAKE_CLOCK: Final = "clock"  # alone in its message: the admin clock's new offset (seconds)
WAKE_FAULTS: Final = "faults"  # alone in its message, on the clock's channel: the fault rules changed

_LUA_TABLES = {
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
    "WAKE": {"keyset": WAKE_KEYSET, "names": WAKE_NAMES, "left": WAKE_LEFT},
    "MESSAGE": {"kind": MESSAGE_KIND, "live_only": MESSAGE_LIVE_ONLY, "rank": MESSAGE_RANK},
}


@functools.cache
def lua_header() -> str:
    """Lua tables of the names above (``EVENT.action`` is ``'a'``), prepended to every script."""
    lines = ["-- Generated from presence_server/store/fields.py: the names of the data scripts write."]
    for table, names in _LUA_TABLES.items():
        body = ", ".join(f"{name} = '{value}'" for name, value in names.items())
        lines.append(f"local {table} = {{{body}}}")
    return "\n".join(lines) + "\n"


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
