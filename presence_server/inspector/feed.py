"""The inspector's JSON: the live feed's subscription and the items of the feed and of last messages.

The feed is a subscribe long-poll like any other (store/longpoll.py): held without a Redis connection,
woken by the keyset's wake-ups, answered by a log read after its cursor, and answered at once, empty,
when the server shuts down. What it reads is every log of the keyset, through a wildcard with an empty
literal part, which no subscribe request can name (``*`` alone is a plain channel name).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from presence_server.store import Delivery, Subscription
from presence_server.store.fields import (
    MESSAGE_BODY,
    MESSAGE_CUSTOM_TYPE,
    MESSAGE_KIND,
    MESSAGE_LIVE_ONLY,
    MESSAGE_META,
    MESSAGE_PUBLISHER,
    presence_payload,
)
from presence_server.store.subscription import PRESENCE_SUFFIX, Target

EVERY_CHANNEL = "*"  # a Target whose base is "*" has the prefix "": every name matches


class KeysetFeed(Subscription):
    """Every presence log of a keyset and, with ``messages``, every message log too."""

    def __init__(self, *, messages: bool) -> None:
        super().__init__((), ())
        names = (EVERY_CHANNEL + PRESENCE_SUFFIX, EVERY_CHANNEL) if messages else (EVERY_CHANNEL + PRESENCE_SUFFIX,)
        self.wildcards = [Target(name) for name in names]
        self.needs_resolving = True
        # In the wildcards' place of the read key: no subscribe request shares these reads.
        self.names = ((), (), names)
        self.prefixes = tuple(target.prefix for target in self.wildcards)


@functools.cache
def keyset_feed(*, messages: bool) -> KeysetFeed:
    return KeysetFeed(messages=messages)


def feed_item(delivery: Delivery) -> dict[str, Any]:
    """One entry of the feed: a presence event, or (asked for) a message or signal."""
    if delivery.source.presence:
        return presence_item(delivery.timetoken, delivery.source.channel, delivery.fields)
    return message_item(delivery.timetoken, delivery.source.channel, delivery.fields)


def presence_item(timetoken: str, channel: str, fields: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "presence", "timetoken": timetoken, "channel": channel, **presence_payload(fields)}
    if "data" in item:
        item["state"] = item.pop("data")  # the page's name for it
    return item


def message_item(timetoken: str, channel: str, fields: dict[str, str]) -> dict[str, Any]:
    item: dict[str, Any] = {
        "type": "signal" if fields.get(MESSAGE_KIND) == "1" else "message",
        "timetoken": timetoken,
        "channel": channel,
        "message": orjson.Fragment(fields[MESSAGE_BODY]),
    }
    if MESSAGE_PUBLISHER in fields:
        item["uuid"] = fields[MESSAGE_PUBLISHER]
    if MESSAGE_META in fields:
        item["meta"] = orjson.Fragment(fields[MESSAGE_META])
    if MESSAGE_CUSTOM_TYPE in fields:
        item["custom_message_type"] = fields[MESSAGE_CUSTOM_TYPE]
    if MESSAGE_LIVE_ONLY in fields:
        item["stored"] = False  # published with store=0 (or while history was off): never in history
    return item
