from presence_server.store.bus import WakeBus
from presence_server.store.connect import open_redis
from presence_server.store.store import (
    GroupCapExceeded,
    HereNowChannel,
    LogEntry,
    PresenceStore,
    timetoken_at,
)
from presence_server.store.subscription import Delivery, Source, Subscription

__all__ = [
    "Delivery",
    "GroupCapExceeded",
    "HereNowChannel",
    "LogEntry",
    "PresenceStore",
    "Source",
    "Subscription",
    "WakeBus",
    "open_redis",
    "timetoken_at",
]
