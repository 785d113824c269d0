"""Channel groups: named sets of channels (group_add/group_remove.lua keep the cap and the group list)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import orjson

from presence_server.store.core import StoreCore
from presence_server.store.fields import GROUP_CHANGED, WAKE_KEYSET, WAKE_NAMES


class GroupCapExceeded(Exception):
    """Adding the channels would grow a channel group past its cap."""


class Groups(StoreCore):
    async def group_add(self, sub_key: str, group: str, channels: Sequence[str]) -> None:
        """Add channels to a group; raise GroupCapExceeded when it would outgrow its cap."""
        ks = self.keys(sub_key)
        # Repeats would be counted as new channels by the cap check.
        channels = list(dict.fromkeys(channels))
        size = await self._group_add(keys=[ks.group(group), ks.groups], args=[group, self.group_cap, *channels])
        if int(size) < 0:
            raise GroupCapExceeded(group)
        await self._group_changed(sub_key, group)

    async def group_remove(self, sub_key: str, group: str, channels: Sequence[str]) -> None:
        """Remove channels from a group; a group left without channels no longer exists."""
        ks = self.keys(sub_key)
        await self._group_remove(keys=[ks.group(group), ks.groups], args=[group, *channels])
        await self._group_changed(sub_key, group)

    async def group_delete(self, sub_key: str, group: str) -> None:
        ks = self.keys(sub_key)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(ks.group(group))
            pipe.srem(ks.groups, group)
            await pipe.execute()
        await self._group_changed(sub_key, group)

    async def _group_changed(self, sub_key: str, group: str) -> None:
        # Polls held on the group re-read its members (and the new channels' logs) at once.
        wake = {WAKE_KEYSET: sub_key, WAKE_NAMES: [GROUP_CHANGED + group]}
        await self.redis.spublish(self.keys(sub_key).wake, orjson.dumps(wake))

    async def group_channels(self, sub_key: str, group: str) -> list[str]:
        members = cast("set[str]", await self.redis.smembers(self.keys(sub_key).group(group)))
        return sorted(members)

    async def group_list(self, sub_key: str) -> list[str]:
        groups = cast("set[str]", await self.redis.smembers(self.keys(sub_key).groups))
        return sorted(groups)
