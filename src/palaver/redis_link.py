"""One pooled Redis client per process, with tight timeouts and a breaker.

When Redis fails, callers get ``RedisDown`` at once for the next second instead of each
waiting out a timeout; then the next call tries again, so palaver recovers without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")
log = logging.getLogger("palaver.redis")

TIMEOUT_SECONDS = 0.5
BREAK_SECONDS = 1.0


class RedisDown(Exception):
    """Redis could not be reached (or was, a moment ago)."""


class RedisLink:
    def __init__(self, url: str, prefix: str) -> None:
        self.prefix = prefix
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),  # one retry, on a fresh connection (after a restart)
            health_check_interval=10,
        )
        self._down_until = 0.0
        self._was_down = False

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    async def run(self, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        if self.down:
            raise RedisDown("Redis is unreachable")
        try:
            result = await call(self.client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            self._down_until = time.monotonic() + BREAK_SECONDS
            if not self._was_down:
                log.warning("Redis is unreachable: %s", exc)
            self._was_down = True
            # Pooled connections to a Redis that went away are dead: start afresh next time.
            with contextlib.suppress(Exception):
                await self.client.connection_pool.disconnect()
            raise RedisDown(str(exc)) from None
        if self._was_down:
            log.warning("Redis is reachable again")
            self._was_down = False
        return result

    async def close(self) -> None:
        await self.client.aclose()
