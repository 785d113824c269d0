from presence_server.store.bus import WakeBus
from presence_server.store.connect import open_redis
from presence_server.store.core import timetoken_at
from presence_server.store.fields import LogEntry
from presence_server.store.groups import GroupCapExceeded
from presence_server.store.longpoll import LongPolls, SubscribeCall
from presence_server.store.reads import HereNowChannel
from presence_server.store.store import PresenceStore
from presence_server.store.subscription import Answer, Delivery, Source, Subscription

__all__ = [
    "Answer",
    "Delivery",
    "GroupCapExceeded",
    "HereNowChannel",
    "LogEntry",
    "LongPolls",
    "PresenceStore",
    "Source",
    "SubscribeCall",
    "Subscription",
    "WakeBus",
    "open_redis",
    "timetoken_at",
]
