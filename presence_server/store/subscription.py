"""What a subscribe request names, and how that maps onto logs: channels, groups, wildcards."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

from presence_server.store.fields import GROUP_CHANGED

PRESENCE_SUFFIX = "-pnpres"
WILDCARD_SUFFIX = ".*"


def split_presence(name: str) -> tuple[str, bool]:
    """``ch-pnpres`` -> (``ch``, True): the base name and whether presence events are asked for."""
    if name.endswith(PRESENCE_SUFFIX):
        return name[: -len(PRESENCE_SUFFIX)], True
    return name, False


def is_presence_name(name: str) -> bool:
    """``<channel>-pnpres`` names are where presence events are read, never where anyone is present."""
    return name.endswith(PRESENCE_SUFFIX)


def is_wildcard(name: str) -> bool:
    return split_presence(name)[0].endswith(WILDCARD_SUFFIX)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """One subscribed name: a channel, a group or a wildcard pattern, maybe with ``-pnpres``."""

    name: str

    @property
    def base(self) -> str:
        return split_presence(self.name)[0]

    @property
    def presence(self) -> bool:
        return split_presence(self.name)[1]

    @property
    def prefix(self) -> str:
        """A wildcard's literal part: ``a.b.*`` -> ``a.b.``."""
        return self.base[:-1]


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """One log a subscription reads: a channel's messages or its presence events, and the
    subscribed name it matched through (the envelope's ``b``; None for a direct subscription)."""

    channel: str
    presence: bool
    via: str | None

    @property
    def delivered_as(self) -> str:
        return self.channel + PRESENCE_SUFFIX if self.presence else self.channel


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """Members of each subscribed group and matches of each wildcard, in subscription order."""

    groups: tuple[tuple[str, ...], ...] = ()
    wildcards: tuple[tuple[str, ...], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    timetoken: str
    source: Source
    fields: dict[str, str]


# Renders a subscribe answer: (cursor, deliveries, subscribe key) -> the JSON body.
Render = Callable[[str, Sequence[Delivery], str], bytes]


class Answer:
    """What a subscribe call answers: the cursor to poll with next and the deliveries. The answer of a
    shared read is shared by every poll that took it, and rendered once for all of them."""

    __slots__ = ("body", "cursor", "deliveries")

    def __init__(self, cursor: str, deliveries: Sequence[Delivery] = ()) -> None:
        self.cursor = cursor  # where the next read starts: the last delivery's timetoken, else the one read after
        self.deliveries = deliveries
        self.body: bytes | None = None

    def rendered(self, render: Render, sub_key: str) -> bytes:
        if self.body is None:  # a publish to a busy channel: render once, answer everyone
            self.body = render(self.cursor, self.deliveries, sub_key)
        return self.body


class ReadResult(Answer):
    """What one read of a subscription found."""

    __slots__ = ("latest", "sources")

    def __init__(self, deliveries: Sequence[Delivery], cursor: str, sources: list[Source], latest: str) -> None:
        super().__init__(cursor, deliveries)
        self.sources = sources  # the logs read (group members and wildcard matches resolved)
        self.latest = latest  # the keyset's last timetoken at the read ("0" for none): tells a cursor from the future


class Subscription:
    """What one subscribe request names. Built once per distinct request (``subscription_of``): a
    client repeats the same names on every poll, so nothing here changes after construction."""

    def __init__(self, channels: Sequence[str], groups: Sequence[str]) -> None:
        self.direct = [Target(name) for name in channels if not is_wildcard(name)]
        self.wildcards = [Target(name) for name in channels if is_wildcard(name)]
        self.groups = [Target(name) for name in groups]
        self.needs_resolving = bool(self.groups or self.wildcards)
        # Channels the subscriber becomes present on: direct, non-presence, non-wildcard names.
        self.presence_channels = tuple(t.name for t in self.direct if not t.presence)
        self.presence_groups = tuple(t.name for t in self.groups if not t.presence)
        # Equal for subscriptions that read the same logs.
        self.names = (
            tuple(t.name for t in self.direct),
            tuple(t.name for t in self.groups),
            tuple(t.name for t in self.wildcards),
        )
        # What a held poll is woken for: its direct names, its groups' change markers, wildcard prefixes.
        self.group_markers = tuple(GROUP_CHANGED + t.base for t in self.groups)
        self.watched = tuple(sorted({t.name for t in self.direct} | set(self.group_markers)))
        self.watched_set = frozenset(self.watched)  # one for every poll of this subscription
        self.prefixes = tuple(t.prefix for t in self.wildcards)

    def sources(self, resolved: Resolved) -> list[Source]:
        """Every log to read, once each: a direct subscription wins over a group, a group over a wildcard."""
        out: dict[tuple[str, bool], Source] = {}
        for target in self.direct:
            out.setdefault((target.base, target.presence), Source(target.base, target.presence, None))
        for target, members in zip(self.groups, resolved.groups, strict=True):
            for channel in members:
                out.setdefault((channel, target.presence), Source(channel, target.presence, target.name))
        for target, matches in zip(self.wildcards, resolved.wildcards, strict=True):
            for channel in matches:
                out.setdefault((channel, target.presence), Source(channel, target.presence, target.name))
        return list(out.values())


CACHED_NAMES = 50  # subscriptions naming more are built for each request


def subscription_of(channels: tuple[str, ...], groups: tuple[str, ...]) -> Subscription:
    """The Subscription of these names, built once per distinct request of up to CACHED_NAMES names
    (the polls a publish wakes repeat theirs). Larger ones are built each time, so that the cache's
    4,096 entries stay within a few MB whatever requests name (500 names each would be hundreds)."""
    if len(channels) + len(groups) > CACHED_NAMES:
        return Subscription(channels, groups)
    return _cached_subscription(channels, groups)


@functools.lru_cache(maxsize=4096)
def _cached_subscription(channels: tuple[str, ...], groups: tuple[str, ...]) -> Subscription:
    return Subscription(channels, groups)
