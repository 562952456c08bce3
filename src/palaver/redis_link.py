"""One pooled Redis client per process, with tight timeouts and a breaker.

- The pool holds up to ``max_connections``; a request that finds them all busy waits up to
  ``pool_timeout`` for one. Running out is local load, not an outage: it fails that call
  (``RedisBusy``) and leaves the breaker alone.
- Every command has ``TIMEOUT_SECONDS`` to connect and as much to answer, and is sent once:
  redis-py's own retries are off, so the timeout is the real one and nothing is silently
  repeated (a repeated write is the caller's decision: see ``stores.redis``).
- When Redis fails, callers get ``RedisDown`` at once for the next ``BREAK_SECONDS`` instead
  of each waiting out a timeout; then the next call tries again, so palaver recovers without a
  restart.
- Commands are packed by hiredis (C), as redis-py's synchronous client does, rather than by
  its asyncio client's Python packer: a turn's write script carries every message as an
  argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")
log = logging.getLogger("palaver.redis")

TIMEOUT_SECONDS = 0.5
BREAK_SECONDS = 1.0
CLOCK_REFRESH_SECONDS = 60.0


class RedisDown(Exception):
    """Redis could not be reached (or was, a moment ago)."""


class RedisBusy(RedisDown):
    """Every pooled connection of this process stayed busy for ``pool_timeout``."""


class _PoolExhausted(RedisConnectionError):
    pass


class _Connection(Connection):
    """A TCP connection whose commands hiredis packs (the arguments encoded as redis-py does)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        encode = self.encoder.encode
        encoded = tuple(bytes(encode(arg)) for arg in args)  # type: ignore[no-untyped-call]
        return [hiredis.pack_command(encoded)]  # type: ignore[arg-type]  # its stub: a 1-tuple


class _Pool(BlockingConnectionPool):
    """Tells a wait for a free connection that timed out apart from a failed connection, and
    hands out an idle connection without redis-py's queueing when nobody waits for one.

    redis-py's blocking pool takes an ``asyncio.Condition``, a timeout and its pool lock for
    every borrow, and holds the condition across awaited event dispatch and observability
    hooks for every return: with tens of requests at once they queue on that lock (in
    process, 32 concurrent turns cost ~180 us of CPU a turn through it, ~120 without). While
    no caller waits for a connection, an idle one is taken and given back directly (asyncio
    runs this code without a switch between the check and the take); it is checked like
    every lent connection (``ensure_connection``, below). A new connection, a
    wait, a release while someone waits, and a connection due to reconnect or re-authenticate
    go through redis-py's own path, which notifies the waiters. (redis-py's connection-count
    observability, which palaver does not configure, does not see the direct borrows.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0  # callers in redis-py's path, which may be waiting for a connection

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        idle = self._available_connections
        if idle and not self._waiting:
            connection = idle.pop()
            self._in_use_connections.add(connection)
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
            return connection
        self._waiting += 1
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise _PoolExhausted("no free Redis connection in this process") from None
            raise
        finally:
            self._waiting -= 1

    async def ensure_connection(self, connection: Any) -> None:
        await connection.connect()  # nothing to do when it is connected
        try:
            stale = await connection.can_read()  # unread data, or the end of the stream
        except (RedisConnectionError, RedisTimeoutError, OSError):
            stale = True
        if stale:
            await connection.disconnect()
            await connection.connect()

    async def release(self, connection: Any) -> None:
        if (
            self._waiting
            or connection.should_reconnect()
            or getattr(connection, "_re_auth_token", None) is not None
        ):
            await super().release(connection)
            return
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)


class RedisLink:
    def __init__(
        self,
        url: str,
        prefix: str,
        *,
        max_connections: int = 128,
        pool_timeout: float = 5.0,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.prefix = prefix
        self.url = url
        pool = _Pool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # sent once: the timeout is the real one
            health_check_interval=10,
            # no CLIENT SETINFO on connect: a burst of 100 requests on a cold pool opens 100
            # connections, ~1 ms of CPU each with it, ~0.35 ms without
            driver_info=None,
        )
        if pool.connection_class is Connection:  # plain TCP (not TLS, not a Unix socket)
            pool.connection_class = _Connection
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._down_until = 0.0
        self._was_down = False
        self._clock_offset = 0.0
        self._clock_at = -CLOCK_REFRESH_SECONDS

    @property
    def down(self) -> bool:
        return time.monotonic() < self._down_until

    async def run(
        self, call: Callable[[aioredis.Redis], Awaitable[T]], *, force: bool = False
    ) -> T:
        """``call(client)``; ``RedisDown`` if Redis fails or failed a moment ago (``force``:
        try even then, to learn the outcome of a write in doubt)."""
        if self.down and not force:
            raise RedisDown("Redis is unreachable")
        try:
            result = await call(self.client)
        except _PoolExhausted as exc:
            raise RedisBusy(str(exc)) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await self._trip(exc)
            raise RedisDown(str(exc)) from None
        if self._was_down:
            log.warning("Redis is reachable again")
            self._was_down = False
        return result

    async def _trip(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + BREAK_SECONDS
        if not self._was_down:
            log.warning("Redis is unreachable: %s", exc)
        self._was_down = True
        # Idle pooled connections to a Redis that went away are dead: start afresh next time.
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    async def on_connection(
        self, call: Callable[[Connection], Awaitable[T]], *, force: bool = False
    ) -> T:
        """Like ``run``, but ``call`` gets one pooled connection, already connected, for its
        whole duration: it knows that what it sends goes out at once."""

        async def borrow(client: aioredis.Redis) -> T:
            pool = client.connection_pool
            connection = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                return await call(connection)
            finally:
                await pool.release(connection)

        return await self.run(borrow, force=force)

    async def clock_offset(self) -> float:
        """Redis's clock minus the local one, in seconds (measured once a minute with TIME)."""
        now = time.monotonic()
        if now - self._clock_at >= CLOCK_REFRESH_SECONDS:
            sent = time.time()
            seconds, micros = await self.run(lambda r: r.time())
            received = time.time()
            self._clock_offset = seconds + micros / 1e6 - (sent + received) / 2
            self._clock_at = now
        return self._clock_offset

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()
        await self.client.connection_pool.disconnect()
