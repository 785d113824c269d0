"""The admin API's fault rules in Redis (presence_server/faults.py says what they do): one hash shared by
every process, so a rule added through one applies in all, and a rule's ``times`` are used up exactly
once each whichever process answers."""

from __future__ import annotations

import secrets
from typing import Any, cast

import orjson

from presence_server.store.core import StoreCore
from presence_server.store.fields import WAKE_FAULTS
from presence_server.store.keys import faults


class FaultRules(StoreCore):
    async def add_fault(self, rule: dict[str, Any], times: int | None) -> str:
        """Keep a rule; returns its id. Every process hears that the rules changed."""
        fault_id = secrets.token_hex(6)
        order = int(await self.redis.hincrby(faults(self.prefix), "seq", 1))  # rules apply in this order
        fields = {f"r:{fault_id}": orjson.dumps({**rule, "id": fault_id, "order": order})}
        if times is not None:
            fields[f"n:{fault_id}"] = str(times).encode()
        await self.redis.hset(faults(self.prefix), mapping=fields)  # type: ignore[arg-type]
        await self._faults_changed()
        return fault_id

    async def fault_rules(self) -> list[dict[str, Any]]:
        """Every rule in the order they were added, with ``left`` (how many more requests it answers) for
        one with ``times``."""
        stored = cast("dict[str, str]", await self.redis.hgetall(faults(self.prefix)))
        rules = []
        for field, value in stored.items():
            if field.startswith("r:"):
                rule = orjson.loads(value)
                left = stored.get(f"n:{field[2:]}")
                if left is not None:
                    rule["left"] = max(0, int(left))
                rules.append(rule)
        return sorted(rules, key=lambda rule: int(rule.get("order", 0)))

    async def remove_fault(self, fault_id: str) -> bool:
        removed = int(await self.redis.hdel(faults(self.prefix), f"r:{fault_id}", f"n:{fault_id}"))
        if removed:
            await self._faults_changed()
        return removed > 0

    async def clear_faults(self) -> int:
        count = len(await self.fault_rules())
        await self.redis.delete(faults(self.prefix))
        await self._faults_changed()
        return count

    async def use_fault(self, fault_id: str) -> bool:
        """Take one of a ``times`` rule's requests: False once they are all taken (by any process). The
        last one removes the rule."""
        left = int(await self.redis.hincrby(faults(self.prefix), f"n:{fault_id}", -1))
        if left <= 0:
            await self.remove_fault(fault_id)
        return left >= 0

    async def _faults_changed(self) -> None:
        await self.redis.spublish(self.clock_channel, orjson.dumps({WAKE_FAULTS: True}))
