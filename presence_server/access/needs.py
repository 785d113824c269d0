"""What each route needs from an Access Manager token or grant (docs/protocol.md 11.6).

Each function reads the request through params.py, as the route's handler does (the same cached
parse), and says which permission on which resource the call needs. A parse that fails raises the
error the handler would have raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from aiohttp import web

from presence_server.access.tokens import CHANNELS, DELETE, GROUPS, MANAGE, READ, WRITE
from presence_server.context import CLOCK, SETTINGS
from presence_server.http import CHANNEL_REGISTRY, PubNubError, SendError
from presence_server.params import path_name, path_names, query_names

# One need: (resource kind, name, bits): any one of the bits on that name will do.
Want = tuple[str, str, int]


@dataclasses.dataclass(frozen=True)
class Demand:
    wants: tuple[Want, ...] = ()
    signed_only: bool = False  # only a server-side (signed) request may make the call
    acting_uuid: str | None = None  # a uuid the call acts for besides its own ``uuid`` (set state)


Needs = Callable[[web.Request], Demand]

NOTHING = Demand()
SIGNED = Demand(signed_only=True)


def nothing(request: web.Request) -> Demand:
    """Leave and where now: no permission, but a token sent must be valid (and its uuid's)."""
    return NOTHING


def signed(request: web.Request) -> Demand:
    """Grants, audits, global here now, the list of every group: server-side requests only."""
    return SIGNED


def _limit(request: web.Request) -> int:
    return request.app[SETTINGS].max_name_length


def _channels_and_groups(request: web.Request, bits: int) -> tuple[Want, ...]:
    limit = _limit(request)
    channels = path_names(request, "channels", "channel", limit)
    groups = query_names(request, "channel-group", "channel group", limit)
    return tuple((CHANNELS, name, bits) for name in channels) + tuple((GROUPS, name, bits) for name in groups)


def read_channels(request: web.Request) -> Demand:
    """Subscribe, heartbeat, here now, get state: read on each channel and group named; a subscribe's
    ``-pnpres`` names are resources of their own, and a wildcard is read by its literal name."""
    return Demand(_channels_and_groups(request, READ))


def set_state(request: web.Request) -> Demand:
    """Read on each channel and group, acting for the uuid in the path."""
    uuid = path_name(request, "uuid", "uuid", _limit(request))
    return Demand(_channels_and_groups(request, READ), acting_uuid=uuid)


def write_channel(request: web.Request) -> Demand:
    """Publish and signal: write on the channel. A refused name is refused as publish refuses it."""
    try:
        channel = path_name(request, "channel", "channel", _limit(request))
    except PubNubError as exc:
        raise SendError(exc, request.app[CLOCK]()) from None
    return Demand(((CHANNELS, channel, WRITE),))


def _group(request: web.Request) -> str:
    return path_name(request, "group", "channel group", _limit(request), CHANNEL_REGISTRY)


def group_change_or_list(request: web.Request) -> Demand:
    """Adding or removing channels: manage on the group; listing its channels: read or manage."""
    changing = "add" in request.query or "remove" in request.query
    return Demand(((GROUPS, _group(request), MANAGE if changing else READ | MANAGE),))


def group_delete(request: web.Request) -> Demand:
    return Demand(((GROUPS, _group(request), MANAGE),))


def read_channel(request: web.Request) -> Demand:
    """History of one channel (v2, with actions): read on it."""
    return Demand(((CHANNELS, path_name(request, "channel", "channel", _limit(request)), READ),))


def history_channels(request: web.Request) -> Demand:
    """Fetching history of channels: read on each; deleting it: delete."""
    channels = path_names(request, "channels", "channel", _limit(request))
    bits = DELETE if request.method == "DELETE" else READ
    return Demand(tuple((CHANNELS, name, bits) for name in channels))
