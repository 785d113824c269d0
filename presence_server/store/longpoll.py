"""Subscribe long-polls (docs/protocol.md 2.2): the one owner of waiting, wake-ups, shared reads, the hold
timer and the presence refresh memo. The route parses a request into a ``SubscribeCall``, makes one
call (``LongPolls.subscribe``) and renders the ``Answer``.

A waiting poll never holds a Redis connection: it registers the names it reads and waits on a bare
future. The wake listener (bus.py) hands every wake-up to ``LongPolls.notify``. A wake-up says
"read again"; the log read by cursor is what guarantees nothing is lost, so a missed or extra
wake-up costs latency, never data.

A publish's wake-up also carries its entry and the keyset's timetoken before it (``Published``).
Timetokens are one counter per keyset, so no entry of the keyset lies between the two: a poll whose
cursor is at or after that previous timetoken, and which reads the entry's channel directly, has
exactly that entry to receive, and is answered with it without a read. Any later entry comes with a
later wake-up, after the new cursor. Every other poll reads as below.

The invariant kept here: **a poll woken for an entry never takes the answer of a read that was
already on its way (sent to Redis) before that entry was written.** Reads are numbered as they
start; a wake-up, which arrives after the entry it reports was committed, takes the number reached
so far as its *marker*, and any read numbered above it sees the entry. So:

- ``notify`` takes the marker before anything else, and the read it makes for a group of waiters
  (``_read_then_wake``) joins only a read numbered above that marker or not yet sent;
- a poll woken again while a result is pending for it drops that result and reads for itself with
  the newer marker (it might lack the newer entry);
- a poll watches its names before it reads, so a wake-up between its read and its wait is never lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeAlias

from presence_server.clock import Clock
from presence_server.store.core import timetoken_at
from presence_server.store.store import PresenceStore
from presence_server.store.subscription import (
    Answer,
    Delivery,
    ReadResult,
    Source,
    Subscription,
    split_presence,
)

PAGE = 100  # deliveries per answer
HOLD_GRAIN = 0.05  # seconds: polls whose holds end within one grain share one loop timer
OWN_JOIN_WINDOW = 5.0  # seconds: how recent a subscriber's own join may be to be handed to it

# What makes two reads return the same thing: keyset, subscribed names, cursor.
ReadKey = tuple[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]], str]
# The held polls of one name that a wake-up treats alike: one subscription (the object: a client's
# polls of a subscription of up to 50 names share it, see subscription_of) and one cursor. Cheap to
# hash (the object's identity and a string), unlike a ReadKey's nested names.
GroupKey = tuple[Subscription, str]
# A group's waiters: the waiter itself while it is alone (idle polls that came at different times hold
# different cursors, and a set per poll would cost 200 bytes more each), else a set of them.
Members: TypeAlias = "_Waiter | set[_Waiter]"


@dataclasses.dataclass(frozen=True, slots=True)
class SubscribeCall:
    """One parsed subscribe request. ``cursor`` "0" is a handshake; ``states`` maps a channel or group
    to the subscriber's state (JSON object text) and ``timeout`` is its presence timeout (None: as before)."""

    sub_key: str
    uuid: str
    subscription: Subscription
    cursor: str
    timeout: float | None
    states: Mapping[str, str]


class Published:
    """A publish's entry as its wake-up carries it (common.lua ``publish_wakes``), and the one answer it
    makes for the polls it completes on its own (see the module's docstring)."""

    __slots__ = ("_answer", "after", "channel", "delivery", "number")

    def __init__(self, channel: str, after: int, timetoken: str, fields: dict[str, str]) -> None:
        self.channel = channel
        self.after = after  # the keyset's timetoken before the entry's
        self.number = int(timetoken)
        self.delivery = Delivery(timetoken, Source(channel, False, None), fields)
        self._answer: ReadResult | None = None

    @classmethod
    def of(cls, entry: object) -> Published | None:
        """From the wake-up's [channel, previous timetoken, timetoken, field, value, ...]; None when it
        has none (or not that shape): its polls then read."""
        if not isinstance(entry, list) or len(entry) < 5 or len(entry) % 2 == 0:
            return None
        if not all(isinstance(value, str) for value in entry):
            return None
        channel, after, timetoken, *pairs = entry
        if not (after.isascii() and after.isdigit() and timetoken.isascii() and timetoken.isdigit()):
            return None
        return cls(channel, int(after), timetoken, dict(zip(pairs[::2], pairs[1::2], strict=True)))

    def answers(self, subscription: Subscription, cursor: str) -> ReadResult | None:
        """The answer of the polls of ``subscription`` at ``cursor``, when this entry alone is what they
        have to receive."""
        if subscription.needs_resolving or not self.after <= int(cursor) < self.number:
            return None
        if self.channel not in subscription.names[0]:
            return None
        if self._answer is None:  # one answer, rendered once, for every poll it completes
            timetoken = self.delivery.timetoken
            self._answer = ReadResult([self.delivery], timetoken, [self.delivery.source], timetoken)
        return self._answer


class RefreshMemo:
    """When this process last refreshed a subscriber's presence, so that a poll after every message
    does not run a heartbeat script every time. The window is half the smallest presence timeout,
    so a skipped refresh can never let anyone time out.

    One entry per (keyset, uuid), holding a digest of what the last refresh said (names, timeout,
    state), never the state itself (which may be 60 KB): memory is bounded by ``max_entries`` and
    ``max_bytes`` (``bytes`` is the memo's own estimate of what it holds) whatever the states. An
    entry older than the window is useless and goes at the next refresh of anyone; a leave or a
    keyset reset drops its users at once, so their next poll makes them present again.
    """

    ENTRY_COST = 256  # bytes per entry besides its two names: the key and value tuples, the dict slot

    def __init__(self, window: float, *, max_entries: int = 100_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.window = window
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._seen: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()  # oldest refresh first

    def __len__(self) -> int:
        return len(self._seen)

    def due(self, sub_key: str, uuid: str, digest: int, now: float) -> bool:
        """Whether a refresh saying ``digest`` is due now; if so, it is noted as made."""
        key = (sub_key, uuid)
        seen = self._seen.get(key)
        if seen is not None:
            if seen[0] == digest and 0 <= now - seen[1] < self.window:
                return False
            self._seen.move_to_end(key)
        else:
            self.bytes += self._cost(key)
        self._seen[key] = (digest, now)
        self._prune(now)
        return True

    def forget(self, sub_key: str, uuid: str | None) -> None:
        """Forget one user of a keyset (it left), or with ``uuid`` None the whole keyset (reset)."""
        if uuid is not None:
            if self._seen.pop((sub_key, uuid), None) is not None:
                self.bytes -= self._cost((sub_key, uuid))
            return
        for key in [key for key in self._seen if key[0] == sub_key]:
            del self._seen[key]
            self.bytes -= self._cost(key)

    def _prune(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, (_, when) = next(iter(seen.items()))
            if len(seen) <= self.max_entries and self.bytes <= self.max_bytes and 0 <= now - when < self.window:
                return
            del seen[key]
            self.bytes -= self._cost(key)

    def _cost(self, key: tuple[str, str]) -> int:
        return self.ENTRY_COST + len(key[0]) + len(key[1])


class _SharedRead:
    """A subscription read under way, which identical reads may join (see ``LongPolls.read``)."""

    __slots__ = ("sent", "seq", "task")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.sent = False
        self.task: asyncio.Future[ReadResult]


class _Waiter:
    """One held poll: what it reads, the names and wildcard prefixes it is woken for, and its wake-up."""

    __slots__ = (
        "_future",
        "_hold_end",
        "_polls",
        "cursor",
        "group",
        "marker",
        "names",
        "prefixes",
        "result",
        "sub_key",
        "subscription",
        "woken",
    )

    def __init__(self, polls: LongPolls, sub_key: str, subscription: Subscription, cursor: str) -> None:
        self._polls = polls
        self.sub_key = sub_key
        self.subscription = subscription
        self.cursor = cursor
        self.group: GroupKey = (subscription, cursor)
        self.names: frozenset[str] = frozenset()
        self.prefixes: tuple[str, ...] = ()
        self.woken = False  # set by a wake-up, cleared by the poll before it reads again
        self.marker: int | None = None  # the read marker when a wake-up came
        self.result: ReadResult | None = None  # read for it by notify, before it was woken
        self._future: asyncio.Future[bool] | None = None  # while the poll waits
        self._hold_end = 0  # the grain its hold ends in, while it waits (_HoldTimers)

    def wake(self, marker: int, result: ReadResult | None = None) -> None:
        self.marker = marker
        self.result = result
        self.signal()

    def signal(self) -> None:
        """Woken: a wait under way returns True now, the next one at once."""
        self.woken = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(True)

    def watch(self, names: frozenset[str], prefixes: tuple[str, ...]) -> None:
        """Replace what this waiter is woken for."""
        self._polls._unregister(self)
        self.names = names
        self.prefixes = prefixes
        self._polls._register(self)

    def arm(self, seconds: float) -> asyncio.Future[bool] | None:
        """The future a wait for a wake-up awaits: True when woken, False once ``seconds`` pass (the
        hold timer); None when woken already. ``disarm`` after the wait, however it ends.

        A bare future in a shared hold timer: neither wait_for (a task of its own before Python 3.12)
        nor an Event under asyncio.timeout (a context object, a deque, a future and a loop timer), paid
        by each of the thousands of polls one publish wakes. Not a coroutine either: the poll awaits the
        future itself, so a wake-up resumes one frame fewer (two with the hold's check, inlined there too).
        """
        if self.woken:
            return None
        polls = self._polls
        holds = polls.hold_timers()
        future: asyncio.Future[bool] = holds.loop.create_future()
        self._future = future
        self._hold_end = holds.add(future, seconds)
        polls.waiting += 1
        return future

    def disarm(self) -> None:
        future = self._future
        if future is not None:
            self._polls.hold_timers().discard(future, self._hold_end)
            self._future = None
            self._polls.waiting -= 1

    def __enter__(self) -> _Waiter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Runs on cancellation too (client went away): the poll's registration goes with it.
        self._polls._unregister(self)


def _each(members: Members) -> Collection[_Waiter]:
    return members if isinstance(members, set) else (members,)


class _HoldTimers:
    """When the waiting polls' holds end, in grains of HOLD_GRAIN seconds: one loop timer per grain,
    not one per poll. A held poll then keeps no timer handle, and the thousands of polls one publish
    wakes each end their wait with a set removal instead of cancelling a timer (which also leaves the
    loop's heap to rebuild). A hold ends up to HOLD_GRAIN late, well inside the SDKs' patience."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ends: dict[int, set[asyncio.Future[bool]]] = {}

    def add(self, future: asyncio.Future[bool], seconds: float) -> int:
        """``future`` gets False once ``seconds`` have passed; returns the grain to ``discard`` it from."""
        grain = math.ceil((self.loop.time() + seconds) / HOLD_GRAIN)
        ends = self._ends.get(grain)
        if ends is None:
            ends = self._ends[grain] = set()
            # A grain emptied (and dropped) then filled again has two timers: the first ends it.
            self.loop.call_at(grain * HOLD_GRAIN, self._end, grain)
        ends.add(future)
        return grain

    def discard(self, future: asyncio.Future[bool], grain: int) -> None:
        ends = self._ends.get(grain)
        if ends is not None:
            ends.discard(future)
            if not ends:
                del self._ends[grain]

    def _end(self, grain: int) -> None:
        for future in self._ends.pop(grain, ()):
            if not future.done():
                future.set_result(False)


class LongPolls:
    """Every subscribe call of this process: handshakes, held polls, their wake-ups and shared reads."""

    def __init__(self, store: PresenceStore, clock: Clock, *, hold: float, refresh_window: float) -> None:
        self.store = store
        self.clock = clock
        self.hold = hold
        self.memo = RefreshMemo(refresh_window)
        self.waiting = 0  # polls waiting for a wake-up now (presence_longpolls_held), not those reading
        self.closing = False
        self.reads_started = 0  # numbers the reads (the markers of the invariant above)
        # (keyset, name) -> the waiters woken for it, by group.
        self._by_name: dict[tuple[str, str], dict[GroupKey, Members]] = {}
        self._by_prefix: dict[str, set[_Waiter]] = defaultdict(set)
        self._held: Counter[str] = Counter()  # keyset -> polls waiting in it
        # Set by the wake listener (bus.py): returns once this process hears the keyset's wake-ups.
        self.watch: Callable[[str], Awaitable[None]] | None = None
        self._reads: dict[ReadKey, _SharedRead] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._hold_timers: _HoldTimers | None = None
        store.on_departure(self.forget)

    def hold_timers(self) -> _HoldTimers:
        """The waiting polls' hold timers, on the loop of the first poll that waited."""
        if self._hold_timers is None:
            self._hold_timers = _HoldTimers(asyncio.get_running_loop())
        return self._hold_timers

    # -- the call the route makes -----------------------------------------------------------------

    def subscribe(self, call: SubscribeCall) -> Coroutine[Any, Any, Answer]:
        """A handshake's cursor, or the next deliveries after the call's cursor, held up to ``hold``
        seconds when there are none. Either way the subscriber's presence is refreshed.

        Not a coroutine itself: the caller awaits the handshake's or the poll's, one frame less for
        each of the thousands of held polls one publish wakes."""
        return self._handshake(call) if call.cursor == "0" else self._poll(call)

    async def _handshake(self, call: SubscribeCall) -> Answer:
        if self.watch is not None:
            await self.watch(call.sub_key)
        # The cursor is taken before the join, so the subscriber's own join comes after it.
        sub_key, subscription = call.sub_key, call.subscription
        cursor = await self.store.cursor(sub_key, now=self.clock())
        if not await self._refresh(call):
            return Answer(cursor)
        # JS sends its join heartbeat in parallel with the handshake (docs/protocol.md 3): when the heartbeat
        # won, the join is already logged before our cursor. Start just before a join of this uuid
        # from the last few seconds, so the subscriber still sees its own join.
        present_on = subscription.presence_channels
        watched = [t.base for t in subscription.direct if t.presence and t.base in present_on]
        if watched:
            since = self.clock() - OWN_JOIN_WINDOW
            own_join = await self.store.recent_join(sub_key, call.uuid, watched, since=since)
            if own_join is not None and int(own_join) <= int(cursor):
                cursor = str(int(own_join) - 1)
        return Answer(cursor)

    async def _refresh(self, call: SubscribeCall) -> bool:
        """Presence rides on subscribe: the subscriber is present on each non-presence channel and
        group. A poll that says what the last one said (JS repeats its state on every poll) need not
        run the heartbeat script again within the memo's window; a handshake always does. Returns
        whether the call names anything to be present on."""
        subscription = call.subscription
        channels, groups = subscription.presence_channels, subscription.presence_groups
        if not channels and not groups:
            return False
        now = self.clock()
        # Python's own hash (keyed per process): equal calls give equal digests, and two different
        # ones collide with odds of about 2**-64, which would only skip one refresh of that user's.
        digest = hash((subscription.names, call.timeout, tuple(sorted(call.states.items()))))
        if self.memo.due(call.sub_key, call.uuid, digest, now) or call.cursor == "0":
            await self.store.heartbeat(
                call.sub_key, call.uuid, channels, groups, now=now, timeout=call.timeout, states=call.states
            )
        return True

    async def _poll(self, call: SubscribeCall) -> Answer:
        if self.watch is not None:
            await self.watch(call.sub_key)
        await self._refresh(call)
        sub_key, subscription, cursor = call.sub_key, call.subscription, call.cursor
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.hold
        with _Waiter(self, sub_key, subscription, cursor) as waiter:
            watched = subscription.watched
            waiter.watch(subscription.watched_set, subscription.prefixes)
            while True:
                # After a wake-up, any read numbered above its marker sees the new entry: notify made
                # that read for every poll one publish woke, or the poll makes it now.
                marker = self.reads_started if waiter.marker is None else waiter.marker
                waiter.marker = None
                waiter.woken = False
                result, waiter.result = waiter.result, None
                if result is None:
                    result = await self.read(sub_key, subscription, cursor, fresh_after=marker)
                if result.deliveries:
                    return result
                present = max(int(result.latest), int(timetoken_at(self.clock())) - 1)
                if int(cursor) > present:
                    # A cursor from the future (another clock, a restarted in-memory server): nothing
                    # can be missed between the present and it, so hand out the present and go on.
                    return Answer(str(present))
                # When the read found logs not yet watched (group members, wildcard matches), watch
                # them too and read once more.
                wanted = tuple(sorted({s.delivered_as for s in result.sources} | set(subscription.group_markers)))
                if wanted != watched:
                    watched = wanted
                    waiter.watch(frozenset(watched), subscription.prefixes)
                    continue
                # Wait for a wake-up. Held long enough, or the server is shutting down: an empty
                # answer with the same cursor, always safe; the client polls again at once, elsewhere
                # if need be (docs/protocol.md 2.2.7).
                remaining = deadline - loop.time()
                if self.closing or remaining <= 0:
                    return Answer(cursor)
                woken = waiter.arm(remaining)
                if woken is not None:
                    try:
                        if not await woken:
                            return Answer(cursor)
                    finally:
                        waiter.disarm()
                if self.closing:
                    return Answer(cursor)

    # -- shared reads ---------------------------------------------------------------------------------

    async def read(
        self, sub_key: str, subscription: Subscription, after: str, *, fresh_after: int | None = None
    ) -> ReadResult:
        """``PresenceStore.read`` of one page, shared by identical reads (a publish wakes every
        subscriber of a channel at once, and they all poll again at once) -- but, by the invariant
        above, only with a read numbered above ``fresh_after`` or not yet sent to Redis."""
        key: ReadKey = (sub_key, subscription.names, after)
        shared = self._reads.get(key)
        if shared is not None and (fresh_after is None or shared.seq > fresh_after or not shared.sent):
            return await asyncio.shield(shared.task)
        self.reads_started += 1
        entry = _SharedRead(self.reads_started)
        entry.task = asyncio.ensure_future(self._read(entry, sub_key, subscription, after))
        self._reads[key] = entry

        def forget(_: object) -> None:
            if self._reads.get(key) is entry:
                del self._reads[key]

        entry.task.add_done_callback(forget)
        return await asyncio.shield(entry.task)

    async def _read(self, entry: _SharedRead, sub_key: str, subscription: Subscription, after: str) -> ReadResult:
        entry.sent = True  # from here on Redis is asked: later callers must not join this read
        return await self.store.read(sub_key, subscription, after, limit=PAGE)

    # -- wake-ups (from the wake listener, bus.py) ---------------------------------------------------

    def notify(self, sub_key: str, names: Iterable[str], published: Published | None = None) -> None:
        """Wake every waiter that reads one of ``names`` in the keyset.

        Waiters that ``published`` answers are woken with it at once. The others are read for first,
        once per distinct read, and woken with the result: a publish to a channel thousands of polls
        hold then costs at most one read and one task step per poll, not a wake-up, a read and another
        wake-up.
        """
        prefixed = self._by_prefix.get(sub_key, ())
        marker = self.reads_started  # reads numbered above this see every entry the wake-up is for
        names = list(names)
        groups: Mapping[GroupKey, Members]
        if len(names) == 1 and not prefixed:  # a publish: nothing to merge, the registry's own groups
            groups = self._by_name.get((sub_key, names[0]), {})
        else:
            merged: dict[GroupKey, set[_Waiter]] = {}  # a waiter of several of the names counts once
            for name in names:
                for key, members in self._by_name.get((sub_key, name), {}).items():
                    merged.setdefault(key, set()).update(_each(members))
                if prefixed:
                    base = split_presence(name)[0]
                    for waiter in prefixed:
                        if any(base.startswith(p) for p in waiter.prefixes):
                            merged.setdefault(waiter.group, set()).add(waiter)
            groups = merged
        # Waking changes no registration (the polls run later), so the groups can be walked as they are.
        for (subscription, cursor), members in groups.items():
            answer = None if published is None else published.answers(subscription, cursor)
            unread: list[_Waiter] = []
            for waiter in _each(members):
                if waiter.woken:
                    # Woken already and not yet read: it now reads for itself, after this marker, and
                    # so sees both entries (a result waiting for it might lack the newer one).
                    waiter.wake(marker)
                elif answer is not None:
                    waiter.wake(marker, answer)
                else:
                    unread.append(waiter)
            if unread:
                task = asyncio.ensure_future(self._read_then_wake(marker, unread))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read_then_wake(self, marker: int, group: list[_Waiter]) -> None:
        first = group[0]
        try:
            result: ReadResult | None = await self.read(
                first.sub_key, first.subscription, first.cursor, fresh_after=marker
            )
        except Exception:  # each poll reads for itself and meets the error there
            result = None
        for waiter in group:
            waiter.wake(marker, result)

    def forget(self, sub_key: str, uuid: str | None) -> None:
        """A user left (or, ``uuid`` None, the keyset was reset), here or in another process: its next
        poll must make it present again, so the memo forgets it."""
        self.memo.forget(sub_key, uuid)

    def holds(self, sub_key: str) -> bool:
        """Whether a poll of the keyset waits in this process."""
        return sub_key in self._held

    def wake_all(self) -> None:
        """Every waiter reads again (the wake listener reconnected: wake-ups may have been missed)."""
        for groups in self._by_name.values():
            for members in groups.values():
                for waiter in _each(members):
                    waiter.signal()
        for waiters in self._by_prefix.values():
            for waiter in waiters:
                waiter.signal()

    def close(self) -> None:
        """Shutting down: wake every waiting poll so it answers now and its client reconnects elsewhere."""
        self.closing = True
        self.wake_all()

    async def aclose(self) -> None:
        """Stop the reads made for woken polls and the shared reads (at shutdown, before the Redis
        client closes): a read still under way would otherwise open a connection on a client that is
        being closed, and leave it unclosed."""
        tasks: list[asyncio.Future[Any]] = [*self._tasks, *(entry.task for entry in self._reads.values())]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)

    # -- registration ---------------------------------------------------------------------------------

    def _register(self, waiter: _Waiter) -> None:
        by_name, group = self._by_name, waiter.group
        for name in waiter.names:
            groups = by_name.get((waiter.sub_key, name))
            if groups is None:
                groups = by_name[(waiter.sub_key, name)] = {}
            members = groups.get(group)
            if members is None:
                groups[group] = waiter
            elif isinstance(members, set):
                members.add(waiter)
            else:
                groups[group] = {members, waiter}
        if waiter.prefixes:
            self._by_prefix[waiter.sub_key].add(waiter)
        self._held[waiter.sub_key] += 1

    def _unregister(self, waiter: _Waiter) -> None:
        if not waiter.names and not waiter.prefixes:
            return
        by_name, group = self._by_name, waiter.group
        for name in waiter.names:
            key = (waiter.sub_key, name)
            groups = by_name.get(key)
            if groups is None:
                continue
            members = groups.get(group)
            if members is waiter:
                del groups[group]
            elif isinstance(members, set):
                members.discard(waiter)
                if not members:
                    del groups[group]
            if not groups:
                del by_name[key]
        prefixed = self._by_prefix.get(waiter.sub_key)
        if prefixed is not None:
            prefixed.discard(waiter)
            if not prefixed:
                del self._by_prefix[waiter.sub_key]
        waiter.names, waiter.prefixes = frozenset(), ()
        self._held[waiter.sub_key] -= 1
        if self._held[waiter.sub_key] <= 0:
            del self._held[waiter.sub_key]
