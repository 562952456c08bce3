"""One pub/sub connection per process for every shared call the process follows.

Followers open a queue on a channel; the one reader task puts each message published there
into the channel's queues. The connection comes from the link's pool and is held while the
process follows anything; it reconnects (and subscribes again) by itself after a failure.
Messages published while it was away are lost: followers fill such gaps from the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.exceptions import RedisError

from palaver.redis_link import RedisLink

log = logging.getLogger("palaver.cache")

READ_SECONDS = 1.0  # the reader wakes this often when nothing comes
SUBSCRIBE_SECONDS = 0.5  # the longest wait for a subscription to be confirmed


class Channels:
    """One pub/sub connection per process carries the entries of every flight it follows."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._pubsub: Any = None
        self._queues: dict[bytes, list[asyncio.Queue[bytes]]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[Any]] = set()
        self._failing = False

    async def open(self, name: str) -> asyncio.Queue[bytes]:
        channel = name.encode()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        queues = self._queues.setdefault(channel, [])
        queues.append(queue)
        try:
            confirmed = self._confirmed.get(channel)
            if len(queues) == 1:
                if self._pubsub is None:
                    self._pubsub = self._link.client.pubsub()
                loop = asyncio.get_running_loop()
                confirmed = self._confirmed[channel] = loop.create_future()
                await self._pubsub.subscribe(channel)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read())
            if confirmed is not None:
                # Entries published before the subscription took hold come from the stream.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SUBSCRIBE_SECONDS):
                        await asyncio.shield(confirmed)
        except BaseException:
            self.leave(name, queue)
            raise
        return queue

    def leave(self, name: str, queue: asyncio.Queue[bytes]) -> None:
        channel = name.encode()
        queues = self._queues.get(channel, [])
        if queue in queues:
            queues.remove(queue)
        if queues:
            return
        self._queues.pop(channel, None)
        self._confirmed.pop(channel, None)
        if self._pubsub is not None and self._pubsub.connection is not None:
            chore = asyncio.create_task(self._unsubscribe(channel))
            self._chores.add(chore)
            chore.add_done_callback(self._chores.discard)

    async def _unsubscribe(self, channel: bytes) -> None:
        if channel in self._queues:
            return  # followed again meanwhile
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=READ_SECONDS)
            except Exception as exc:  # RedisError, OSError, or the unforeseen: keep reading
                if not self._failing:
                    log.warning("following shared calls: Redis is unreachable: %s", exc)
                self._failing = True
                await asyncio.sleep(0.5)  # the next read reconnects and subscribes again
                continue
            self._failing = False
            if message is None:
                continue
            channel = message["channel"]
            if message["type"] == "message":
                for queue in self._queues.get(channel, ()):
                    queue.put_nowait(message["data"])
            elif message["type"] == "subscribe":
                confirmed = self._confirmed.pop(channel, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)

    async def close(self) -> None:
        tasks = list(self._chores)
        if self._reader is not None:
            self._reader.cancel()
            tasks.append(self._reader)
            self._reader = None
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
