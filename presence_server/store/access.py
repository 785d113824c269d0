"""Access Manager data (docs/protocol.md 11): revoked tokens and v2 grants, shared by every process."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import cast

import orjson

from presence_server.store.core import StoreCore, ms
from presence_server.store.fields import WAKE_KEYSET, WAKE_REVOKED


@dataclasses.dataclass(frozen=True)
class GrantKey:
    """Who a v2 grant is for: the keyset (level ``s``), or a channel (``c``), group (``g``) or uuid
    (``u``) by name; for one auth key, or for everyone when ``auth`` is empty."""

    level: str
    name: str = ""
    auth: str = ""


class AccessGrants(StoreCore):
    async def revoke_token(self, sub_key: str, token_id: str, *, seconds_left: float) -> None:
        """Remember for its remaining lifetime that the token is revoked, and tell every process."""
        ks = self.keys(sub_key)
        await self.redis.set(ks.revoked(token_id), "1", px=max(1000, ms(seconds_left) + 1000))
        await self.redis.spublish(self.keys(sub_key).wake, orjson.dumps({WAKE_KEYSET: sub_key, WAKE_REVOKED: token_id}))

    async def token_revoked(self, sub_key: str, token_id: str) -> bool:
        return bool(await self.redis.exists(self.keys(sub_key).revoked(token_id)))

    async def set_grants(self, sub_key: str, grants: Sequence[tuple[GrantKey, int]], *, now: float, ttl: int) -> None:
        """Give each key its bits for ``ttl`` minutes (0: with no end); bits 0 remove the grant."""
        ks = self.keys(sub_key)
        ends = 0 if ttl == 0 else ms(now) + ttl * 60_000
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, bits in grants:
                name = ks.grant(key.level, key.name, key.auth)
                if bits == 0:
                    pipe.delete(name)
                elif ttl == 0:
                    pipe.set(name, f"{bits}:0:0")
                else:
                    # Redis forgets it after its lifetime in real time; the server's clock (which the
                    # admin API moves forward, never back) ends it no later.
                    pipe.set(name, f"{bits}:{ends}:{ttl}", px=ttl * 60_000)
            await pipe.execute()

    async def grants(self, sub_key: str, keys: Sequence[GrantKey], *, now: float) -> list[int]:
        """The bits each key has now (0 when none or ended)."""
        return [bits for bits, _ in await self.held_grants(sub_key, keys, now=now)]

    async def held_grants(self, sub_key: str, keys: Sequence[GrantKey], *, now: float) -> list[tuple[int, int]]:
        """(bits, ttl in minutes as granted) of each key now; (0, 0) when none or ended."""
        if not keys:
            return []
        ks = self.keys(sub_key)
        values = await self.redis.mget([ks.grant(key.level, key.name, key.auth) for key in keys])
        return [_live(cast("str | None", value), ms(now)) for value in values]


def _live(value: str | None, now_ms: int) -> tuple[int, int]:
    if value is None:
        return 0, 0
    bits, ends, ttl = value.split(":")
    return (int(bits), int(ttl)) if ends == "0" or int(ends) >= now_ms else (0, 0)
