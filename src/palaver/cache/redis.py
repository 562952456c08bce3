"""The response cache in Redis, shared by every palaver process.

Entries are compact JSON under ``<prefix>cache:<sha256>`` and expire by Redis TTL; memory is
bounded by Redis itself (set ``maxmemory`` with an LRU policy on the server). Its ``board``
lets one process lead an upstream call that the others relay (``redis_flights``).
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

import orjson

from palaver.cache.base import CacheUnavailable
from palaver.cache.redis_flights import FlightBoard, Lease
from palaver.protocol import Json
from palaver.redis_link import RedisDown, RedisLink


class RedisCache:
    def __init__(self, link: RedisLink, ttl: float) -> None:
        self._link = link
        self._ttl_ms = max(1, int(ttl * 1000))
        self._prefix = link.prefix
        self._board = FlightBoard(link)

    @property
    def available(self) -> bool:
        return not self._link.down

    @property
    def board(self) -> FlightBoard:
        return self._board

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
        with contextlib.suppress(RedisDown):  # the outage is logged once, by the link
            await self._link.run(
                lambda r: r.set(self._prefix + "cache:" + key, raw, px=self._ttl_ms)
            )

    async def lock(self, key: str) -> str | None:
        """A token if this process may lead the call for ``key``; None if another leads."""
        claim = await self._board.claim(key)
        if claim is None:
            return secrets.token_hex(8)  # no Redis, no coordination: lead
        return claim.token if isinstance(claim, Lease) else None

    async def unlock(self, key: str, token: str) -> None:
        await Lease(self._board, key, token).release()

    async def close(self) -> None:
        """The link belongs to the app, which closes it."""
        await self._board.close()
