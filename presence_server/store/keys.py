"""The only place Redis key names are built.

Every key of a keyset carries the keyset's hash tag right after the prefix: ``pn:{demo}:occ:<channel>``.
Redis Cluster hashes only the first ``{...}`` of a key, so a channel name containing braces cannot move
a key to another slot, and every script of one keyset runs on one slot. The tag is the subscribe key
with ``%``, ``{`` and ``}`` percent-escaped, so it is never empty and never closes early.
"""

from __future__ import annotations


def _tag(sub_key: str) -> str:
    # An empty tag would make Redis Cluster hash whole key names. A lone "%" is never the escape
    # of a non-empty key (a "%" of its own becomes "%25"), so it stands for the empty one.
    return sub_key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D") or "%"


def keysets_due(prefix: str) -> str:
    """Sorted set: keyset (subscribe key) -> when (ms) the sweeper must next look at it: no later
    than the earliest deadline of anyone present in it, or its next interval event."""
    return f"{prefix}:keysets:due"


def keysets_known(prefix: str) -> str:
    """Set: every keyset that ever had someone present (for reconciling the global due index)."""
    return f"{prefix}:keysets:known"


def clock_offset(prefix: str) -> str:
    """String (float): seconds the admin API has moved every process's clock forward. Also the name of
    the sharded pub/sub channel that announces each move (a shard channel hashes like the key of the
    same name, so on a cluster both live on one node, and every process listens there)."""
    return f"{prefix}:clock:offset"


def faults(prefix: str) -> str:
    """Hash: the admin API's fault rules, ``r:<id>`` -> the rule as JSON, ``n:<id>`` -> how many more
    requests a rule with ``times`` may answer (decremented by each process that applies it), and ``seq``,
    the last rule's place in the order they apply in."""
    return f"{prefix}:faults"


class KeysetKeys:
    """Key names of one keyset (one subscribe key)."""

    __slots__ = (
        "_base",
        "counters",
        "due",
        "groups",
        "hooks",
        "hooks_active",
        "hooks_lease",
        "intervals",
        "names",
        "sub_key",
        "timetoken",
        "wake",
    )

    def __init__(self, prefix: str, sub_key: str) -> None:
        self.sub_key = sub_key
        self._base = base = f"{prefix}:{{{_tag(sub_key)}}}:"
        # String: the last timetoken handed out in this keyset.
        self.timetoken = base + "tt"
        # Sorted set: occupied channel -> a time (ms) no later than its occupants' earliest deadline
        # (heartbeats only lower it; a sweep visiting the channel makes it exact); the sweeper's index.
        self.due = base + "due"
        # Sorted set: channel in interval mode -> when its next interval event is due (ms).
        self.intervals = base + "ivl"
        # Sorted set (all scores 0, read by lex range): every channel that has a log; for wildcards.
        self.names = base + "names"
        # Hash: keyset-wide counters kept by the scripts ("occupants": present user-channel pairs).
        self.counters = base + "counters"
        # Set: names of the channel groups that have channels.
        self.groups = base + "groups"
        # Sharded pub/sub channel (SPUBLISH, SSUBSCRIBE: in the keyset's slot, so on a cluster a wake-up
        # goes only to the node that owns the keyset): which logs grew, ``{"k": sub_key, "n": [names]}``,
        # leaves, resets, group changes, token revocations (fields WAKE_* of fields.py).
        self.wake = base + "wake"
        # Stream (only with presence webhooks on): every presence event of the keyset, with its channel
        # (fields EVENT_* and HOOK_* of fields.py), read through the consumer group ``webhooks`` by the
        # one process that holds ``hooks_lease``; delivered entries are deleted.
        self.hooks = base + "hooks"
        # Set (with webhooks on): the channels whose ``active`` notice went out and no ``inactive`` since.
        self.hooks_active = base + "hooks:active"
        # String: ``<consumer> <until ms>``, the process that delivers this keyset's webhooks, and until when.
        self.hooks_lease = base + "hooks:lease"

    @property
    def match_all(self) -> str:
        """A SCAN MATCH pattern for every key of this keyset (glob characters escaped)."""
        return "".join("\\" + c if c in "*?[]\\" else c for c in self._base) + "*"

    def uuid_timeout(self, uuid: str) -> str:
        """String with expiry: the presence timeout a uuid last asked for, when not the default."""
        return self._base + "hbt:" + uuid

    def occupants(self, channel: str) -> str:
        """Sorted set: uuid -> presence deadline (ms)."""
        return self._base + "occ:" + channel

    def state(self, channel: str) -> str:
        """Hash: uuid -> state JSON object text."""
        return self._base + "st:" + channel

    def log(self, channel: str) -> str:
        """Stream: the channel's presence events (delivered on ``<channel>-pnpres``), id ``<timetoken>-0``."""
        return self._base + "log:" + channel

    def deltas(self, channel: str) -> str:
        """Hash: ``<action>:<uuid>`` of the joins, leaves and timeouts since the last interval event."""
        return self._base + "dlt:" + channel

    def messages(self, channel: str) -> str:
        """Stream: the channel's published messages and signals, entry id ``<timetoken>-0``."""
        return self._base + "msg:" + channel

    def history_gone(self, channel: str) -> str:
        """Sorted set (scores 0, read by lex range): the 17-digit timetokens of messages that left the
        channel's history before retention trimmed them (deleted, or past their own ttl)."""
        return self._base + "hgn:" + channel

    def history_rank(self, channel: str) -> str:
        """String (integer): how many messages history has ever shown in the channel's log: the rank the
        next shown message gets (MESSAGE_RANK). Never lowered, so deletes leave ranks apart."""
        return self._base + "hrk:" + channel

    def history_ttl(self, channel: str) -> str:
        """Sorted set: 17-digit timetoken of a message with its own ttl -> when it leaves history (ms)."""
        return self._base + "htl:" + channel

    def group(self, group: str) -> str:
        """Set: the channels of one channel group."""
        return self._base + "grp:" + group

    def revoked(self, token_id: str) -> str:
        """String with expiry (the token's remaining lifetime): an Access Manager token was revoked."""
        return self._base + "rvk:" + token_id

    def grant(self, level: str, name: str, auth: str) -> str:
        """String with expiry: the bits of one Access Manager v2 grant, when it ends and its ttl as
        granted, ``<bits>:<end ms>:<minutes>`` (``0`` for never). ``level`` is ``s`` (the keyset),
        ``c`` (a channel), ``g`` (a group) or ``u`` (a uuid); ``auth`` is empty unless granted to one
        auth key. The name's length comes first, so
        that no name and auth key can spell another pair's key."""
        return f"{self._base}pam:{level}:{len(name)}:{name}:{auth}"
