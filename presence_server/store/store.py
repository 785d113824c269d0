"""The presence store: every Redis operation of the server, on real Redis or fakeredis alike.

``PresenceStore`` is the one object handlers call. Each concern is a module of its own:

- ``core.py``: the client, settings, scripts and the calling convention of common.lua
- ``presence.py``: heartbeat, leave, state changes (writes)
- ``reads.py``: here_now, where_now, get_state
- ``delivery.py``: publish, cursors, subscribe reads of the logs
- ``expiry.py``: the sweep and the global due index
- ``groups.py``: channel groups
- ``history.py``: message history: reads, counts, deletes
- ``admin.py``: admin clock, keyset reset, snapshot
- ``access.py``: Access Manager revocations and v2 grants
- ``faults.py``: the admin API's fault rules
- ``totals.py``: metric totals
- ``webhooks.py``: the presence webhooks' queue (streams, consumer group, leases)
- ``keys.py`` builds every key name; ``fields.py`` names the data the scripts write.

Beside the store: ``longpoll.py`` owns subscribe polls (waiting, wake-ups, shared reads, the
refresh memo), ``bus.py`` is the pub/sub listener that feeds it, ``subscription.py`` maps subscribed
names onto logs, ``batch.py`` coalesces script calls, ``connect.py`` opens the client.
"""

from __future__ import annotations

from presence_server.store.access import AccessGrants
from presence_server.store.admin import Admin
from presence_server.store.delivery import Logs
from presence_server.store.expiry import Expiry
from presence_server.store.faults import FaultRules
from presence_server.store.groups import Groups
from presence_server.store.history import History
from presence_server.store.presence import PresenceWrites
from presence_server.store.reads import PresenceReads
from presence_server.store.totals import Totals
from presence_server.store.webhooks import WebhookQueue


class PresenceStore(
    PresenceWrites, PresenceReads, Logs, Expiry, Groups, History, Admin, AccessGrants, FaultRules, Totals, WebhookQueue
):
    """Presence, state, channel groups and event logs of every keyset, kept in one Redis."""
