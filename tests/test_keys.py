"""Every script's keys hash to one Redis Cluster slot, whatever names users choose."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from typing import Any

import pytest
from redis.commands.core import AsyncScript
from redis.crc import key_slot

from presence_server.store import PresenceStore
from presence_server.store.keys import KeysetKeys
from presence_server.store.subscription import Subscription
from tests.helpers.app import START

# Names that try to break hash tags: braces anywhere, the escape character, separators, unicode.
SUB_KEYS = ["demo", "{", "}", "{}", "}{", "a{b}c", "{demo}", "%", "%7B", "%7D", "%25", "k:1", "ключ-🔑", ""]
CHANNELS = ["plain", "{", "}", "{}", "a{b}", "}x{", "%7D", "ch:occ:x", "канал🙂", "{pn}:{x}"]
UUIDS = ["u1", "{u}", "ю{"]
GROUP = "g{}%:ю"

# Every script the store registers, and the scenario below must call each one.
SCRIPTS = {"_heartbeat", "_leave", "_set_state", "_sweep", "_publish", "_here_now", "_group_add", "_group_remove"}


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text of the first ``{...}``, when that is not empty."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def every_key(ks: KeysetKeys, names: list[str]) -> list[str]:
    """Every key KeysetKeys builds: each property, and each per-name key for every name."""
    keys: list[str] = []
    for attribute, member in vars(KeysetKeys).items():
        if attribute.startswith("_") or attribute in ("sub_key", "match_all"):
            continue
        if isinstance(member, property):
            keys.append(getattr(ks, attribute))
        elif callable(member):
            # Every name argument gets the name (a v2 grant's key takes a level, a name and an auth key).
            arity = len(inspect.signature(member).parameters) - 1
            keys += [getattr(ks, attribute)(*[name] * arity) for name in names]
    assert len(keys) >= 6 + 5 * len(names)  # the introspection found the builders
    return keys


def slot(key: str) -> int:
    return key_slot(key.encode())


async def test_every_script_call_keeps_its_keys_in_one_slot(
    store: PresenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, list[str]]] = []
    registered = {name: value for name, value in vars(store).items() if isinstance(value, AsyncScript)}
    assert set(registered) >= SCRIPTS

    class Recording:
        """Stands in for a registered script: notes the KEYS of each call, then runs it for real."""

        def __init__(self, name: str, script: AsyncScript) -> None:
            self.name, self.script, self.sha = name, script, script.sha

        async def __call__(self, keys: Any = None, args: Any = None, client: Any = None) -> Any:
            calls.append((self.name, list(keys or [])))
            return await self.script(keys=keys, args=args, client=client)

    for name, script in registered.items():
        monkeypatch.setattr(store, name, Recording(name, script))

    # Calls made in one loop iteration may be coalesced and sent as raw EVALSHAs, past the script
    # objects: note those where they are queued, and queue the real script.
    batcher = getattr(store, "_batch", None)
    if batcher is not None:
        queue = batcher.call

        def queue_and_note(script: Any, keys: Any, args: Any) -> Any:
            if isinstance(script, Recording):
                calls.append((script.name, list(keys)))
                script = script.script
            return queue(script, keys, args)

        monkeypatch.setattr(batcher, "call", queue_and_note)

    for sub in SUB_KEYS:
        await store.group_add(sub, GROUP, CHANNELS[:4])
        # Concurrently, as requests arrive: this is where calls get coalesced.
        await asyncio.gather(
            *(
                store.heartbeat(
                    sub, uuid, CHANNELS, [GROUP], now=START, timeout=10 + i, states={CHANNELS[1]: '{"s":"{x}"}'}
                )
                for i, uuid in enumerate(UUIDS)
            )
        )
        assert sorted(await store.where_now(sub, UUIDS[0], now=START)) == sorted(CHANNELS)
        await store.set_state(sub, UUIDS[0], CHANNELS, [GROUP], '{"t":1}', now=START)
        assert (await store.get_state(sub, UUIDS[0], CHANNELS[-1:]))[CHANNELS[-1]] == {"t": 1}
        found = await store.here_now(sub, CHANNELS, [GROUP], now=START, with_state=True)
        assert {entry.channel: entry.occupancy for entry in found} == dict.fromkeys(CHANNELS, len(UUIDS))
        assert len(await store.here_now_global(sub, now=START)) == len(CHANNELS)
        assert await store.leave(sub, UUIDS[1], CHANNELS[:3], [GROUP], now=START) == 4
        await store.group_remove(sub, GROUP, CHANNELS[:2])
        assert await store.group_list(sub) == [GROUP]
        assert await store.group_channels(sub, GROUP) == sorted(CHANNELS[2:4])
        assert len(await store.read_log(sub, CHANNELS[-1])) == len(UUIDS) + 1
        published = await store.publish(sub, CHANNELS[-1], '"{hi}"', now=START)
        # The subscribe read: one MULTI over the logs of direct, group and presence sources.
        subscription = Subscription([CHANNELS[-1], CHANNELS[2] + "-pnpres"], [GROUP])
        deliveries = (await store.read(sub, subscription, "0")).deliveries
        assert published in [d.timetoken for d in deliveries]
        await store.group_delete(sub, GROUP)
    assert await store.sweep(now=START + 60) == len(SUB_KEYS) * (len(UUIDS) * len(CHANNELS) - 4)

    assert {name for name, _ in calls} >= SCRIPTS
    if batcher is not None:  # some calls really went out coalesced, past the script objects
        assert batcher.calls > batcher.batches
    for name, keys in calls:
        assert keys, name
        tags = {hash_tag(key) for key in keys}
        assert len(tags) == 1, (name, keys)
        [tag] = tags
        assert tag and tag not in keys, (name, keys)  # a real, non-empty hash tag
        assert len({slot(key) for key in keys}) == 1, (name, keys)


def test_plain_multi_key_commands_stay_in_one_slot() -> None:
    # group_delete runs DEL of the group and SREM from the group list in one MULTI/EXEC; a
    # subscribe read runs one MULTI over group members, the name index and the channels' logs.
    for sub in SUB_KEYS:
        ks = KeysetKeys("pn", sub)
        assert len({slot(key) for key in every_key(ks, [GROUP, *CHANNELS])}) == 1, sub


def test_keyset_hash_tags_are_never_empty_and_never_shared() -> None:
    # Every name up to four characters long over an alphabet of braces, the escape character and
    # what follows it in escapes, plus the empty name.
    alphabet = "{}%7BD2"
    names = [""] + ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    tags: dict[str, str] = {}
    for sub in names:
        ks = KeysetKeys("pn", sub)
        keys = every_key(ks, ["", "{", "}", "{}", "}{", "%7B"])
        keyset_tags = {hash_tag(key) for key in keys}
        assert len(keyset_tags) == 1, sub
        [tag] = keyset_tags
        assert tag and tag not in keys, sub
        assert "{" not in tag and "}" not in tag, sub
        # Two keysets never share a tag, so never share keys.
        assert tags.setdefault(tag, sub) == sub, (sub, tags[tag])
