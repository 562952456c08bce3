"""The response cache in Redis, shared by every palaver process.

Entries are compact JSON under ``<prefix>cache:<sha256>`` and expire by Redis TTL; memory is
bounded by Redis itself (set ``maxmemory`` with an LRU policy on the server). A short lock,
``<prefix>lock:<sha256>``, lets one process lead an upstream call that others wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import orjson

from palaver.cache import CacheUnavailable
from palaver.protocol import Json
from palaver.redis_link import RedisDown, RedisLink

LOCK_SECONDS = 30.0
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisCache:
    def __init__(self, link: RedisLink, ttl: float) -> None:
        self._link = link
        self._ttl_ms = max(1, int(ttl * 1000))
        self._prefix = link.prefix

    @property
    def available(self) -> bool:
        return not self._link.down

    async def get(self, key: str) -> Json | None:
        try:
            raw = await self._link.run(lambda r: r.get(self._prefix + "cache:" + key))
        except RedisDown:
            raise CacheUnavailable from None
        if raw is None:
            return None
        value: Any = orjson.loads(raw)
        return value if isinstance(value, dict) else None

    async def set(self, key: str, value: Json) -> None:
        raw = orjson.dumps(value)
        await self._link.run(lambda r: r.set(self._prefix + "cache:" + key, raw, px=self._ttl_ms))

    async def lock(self, key: str) -> str | None:
        """A token if this process may lead the call for ``key``; None if another leads."""
        token = secrets.token_hex(8)
        try:
            taken = await self._link.run(
                lambda r: r.set(
                    self._prefix + "lock:" + key, token, nx=True, px=int(LOCK_SECONDS * 1000)
                )
            )
        except RedisDown:
            return token  # no Redis, no coordination: lead
        return token if taken else None

    async def unlock(self, key: str, token: str) -> None:
        with contextlib.suppress(RedisDown):  # if Redis is gone, the lock expires by itself
            await self._link.run(lambda r: r.eval(_UNLOCK, 1, self._prefix + "lock:" + key, token))

    async def wait_for(self, key: str, deadline: float = LOCK_SECONDS) -> Json | None:
        """Wait for another process's answer: the entry, or None once its lock is gone
        (the leader failed or crashed) or the deadline passed."""
        pause = 0.01
        ends = time.monotonic() + deadline
        lock = self._prefix + "lock:" + key
        while time.monotonic() < ends:
            found = await self.get(key)
            if found is not None:
                return found
            try:
                held = await self._link.run(lambda r: r.exists(lock))
            except RedisDown:
                return None
            if not held:
                return await self.get(key)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)
        return None

    async def close(self) -> None:
        """The link belongs to the app, which closes it."""
