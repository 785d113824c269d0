from server.store.connect import open_redis
from server.store.store import (
    GroupCapExceeded,
    HereNowChannel,
    LogEntry,
    PresenceStore,
    StoreUnavailable,
    timetoken_at,
)

__all__ = [
    "GroupCapExceeded",
    "HereNowChannel",
    "LogEntry",
    "PresenceStore",
    "StoreUnavailable",
    "open_redis",
    "timetoken_at",
]
