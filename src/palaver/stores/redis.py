"""Conversations in Redis, shared by palaver processes on many machines.

Keys (``p`` is ``redis.key_prefix``); the ``{...}`` hash tags keep a conversation's two keys
in one Redis Cluster slot, so a transaction may touch both:

    p{c:<id>}:meta        hash: tenant, created_at, updated_at, count, metadata
    p{c:<id>}:msgs        list: one JSON record per message
    p{i}:lru              sorted set of ids by last use (cleanup of the least recently used)
    p{i}:t:<tenant>       sorted set of a tenant's ids by creation (listing)

An append is one optimistic transaction (WATCH, then MULTI/EXEC, retried on conflict): the
messages are added and the conversation trimmed together, so concurrent turns from any number
of processes never lose a message. The two indexes are updated right after.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from palaver.errors import ServiceUnavailable
from palaver.protocol import Message
from palaver.redis_link import RedisDown, RedisLink
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    NotOwner,
    Selector,
    StoredMessage,
    new_item_id,
)

T = TypeVar("T")
MAX_ATTEMPTS = 200


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Conversation storage (Redis) is unreachable; the conversation was not touched. "
        "Retry shortly."
    )


def _multi(pipe: Pipeline) -> None:
    pipe.multi()  # type: ignore[no-untyped-call]


def _record(message: Message, now: float) -> bytes:
    return orjson.dumps({"i": new_item_id(), "t": now, "m": message})


def _stored(raw: bytes) -> StoredMessage:
    record = orjson.loads(raw)
    return StoredMessage(record["i"], record["t"], record["m"])


def _info(conversation_id: str, meta: dict[bytes, bytes]) -> ConversationInfo:
    return ConversationInfo(
        conversation_id,
        meta[b"tenant"].decode(),
        float(meta[b"created_at"]),
        float(meta[b"updated_at"]),
        int(meta.get(b"count", b"0")),
        orjson.loads(meta.get(b"metadata", b"{}")),
    )


class RedisStore:
    def __init__(self, link: RedisLink, idle_ttl: float = 0.0) -> None:
        self._link = link
        self._p = link.prefix
        self._idle_ttl = idle_ttl

    @property
    def available(self) -> bool:
        return not self._link.down

    def _meta(self, conversation_id: str) -> str:
        return f"{self._p}{{c:{conversation_id}}}:meta"

    def _msgs(self, conversation_id: str) -> str:
        return f"{self._p}{{c:{conversation_id}}}:msgs"

    @property
    def _lru(self) -> str:
        return f"{self._p}{{i}}:lru"

    def _tenant(self, tenant: str) -> str:
        return f"{self._p}{{i}}:t:{tenant or '-'}"

    async def _run(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._link.run(call)
        except RedisDown:
            raise unavailable() from None

    def _expired(self, meta: dict[bytes, bytes]) -> bool:
        return bool(self._idle_ttl) and float(meta[b"updated_at"]) < time.time() - self._idle_ttl

    # -- reading ---------------------------------------------------------------------------

    async def load(
        self, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, list[StoredMessage]] | None:
        async def load(r: Redis) -> tuple[dict[bytes, bytes], list[bytes]]:
            async with r.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._meta(conversation_id))
                pipe.lrange(self._msgs(conversation_id), 0, -1)
                meta, raw = await pipe.execute()
            return meta, raw

        meta, raw = await self._run(load)
        if not meta:
            return None
        if self._expired(meta):
            await self._forget([conversation_id])
            return None
        info = _info(conversation_id, meta)
        if info.tenant != tenant:
            raise NotOwner(conversation_id)
        return info, [_stored(item) for item in raw]

    # -- writing ---------------------------------------------------------------------------

    async def _transaction(
        self, conversation_id: str, body: Callable[[Pipeline], Awaitable[T]]
    ) -> T:
        """Run ``body`` under WATCH of the conversation's keys until its EXEC goes through."""

        async def attempt(r: Redis) -> T:
            for tries in range(MAX_ATTEMPTS):
                async with r.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self._meta(conversation_id), self._msgs(conversation_id))
                        return await body(pipe)
                    except WatchError:
                        await asyncio.sleep(random.uniform(0, 0.002 * min(tries + 1, 10)))
            raise unavailable()

        return await self._run(attempt)

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        now = time.time()

        async def create(pipe: Pipeline) -> ConversationInfo:
            if await pipe.exists(self._meta(conversation_id)):
                raise AlreadyExists(conversation_id)
            _multi(pipe)
            pipe.hset(
                self._meta(conversation_id),
                mapping={
                    "tenant": tenant,
                    "created_at": repr(now),
                    "updated_at": repr(now),
                    "count": len(messages),
                    "metadata": orjson.dumps(metadata),
                },
            )
            if messages:
                pipe.rpush(self._msgs(conversation_id), *(_record(m, now) for m in messages))
            await pipe.execute()
            return ConversationInfo(conversation_id, tenant, now, now, len(messages), metadata)

        info = await self._transaction(conversation_id, create)
        await self._index(info, created=True)
        return info

    async def append(
        self, conversation_id: str, tenant: str, messages: list[Message], select: Selector
    ) -> ConversationInfo:
        async def append(pipe: Pipeline) -> tuple[ConversationInfo, bool]:
            now = time.time()
            meta_key, msgs_key = self._meta(conversation_id), self._msgs(conversation_id)
            meta: Any = await pipe.hgetall(meta_key)
            fresh = not meta or self._expired(meta)
            if fresh:
                info = ConversationInfo(conversation_id, tenant, now, now)
                current: list[bytes] = []
            else:
                info = _info(conversation_id, meta)
                if info.tenant != tenant:
                    raise NotOwner(conversation_id)
                stored: Any = await pipe.lrange(msgs_key, 0, -1)
                current = list(stored)
            added = [_record(m, now) for m in messages]
            records = current + added
            kept = select([orjson.loads(r)["m"] for r in records])
            _multi(pipe)
            if fresh:
                pipe.delete(msgs_key)
                pipe.hset(
                    meta_key,
                    mapping={
                        "tenant": tenant,
                        "created_at": repr(now),
                        "metadata": b"{}",
                    },
                )
            if len(kept) == len(records):
                if added:
                    pipe.rpush(msgs_key, *added)
            else:
                pipe.delete(msgs_key)
                pipe.rpush(msgs_key, *(records[i] for i in kept))
            pipe.hset(meta_key, mapping={"updated_at": repr(now), "count": len(kept)})
            await pipe.execute()
            info.updated_at = now
            info.message_count = len(kept)
            return info, fresh

        info, fresh = await self._transaction(conversation_id, append)
        await self._index(info, created=fresh)
        return info

    async def _index(self, info: ConversationInfo, created: bool) -> None:
        async def index(r: Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.zadd(self._lru, {info.id: info.updated_at})
                if created:
                    pipe.zadd(self._tenant(info.tenant), {info.id: info.created_at})
                await pipe.execute()

        await self._run(index)

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None:
        async def update(pipe: Pipeline) -> ConversationInfo | None:
            meta: Any = await pipe.hgetall(self._meta(conversation_id))
            if not meta:
                return None
            info = _info(conversation_id, meta)
            if info.tenant != tenant:
                raise NotOwner(conversation_id)
            _multi(pipe)
            pipe.hset(self._meta(conversation_id), "metadata", orjson.dumps(metadata))
            await pipe.execute()
            info.metadata = dict(metadata)
            return info

        return await self._transaction(conversation_id, update)

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        meta: Any = await self._run(lambda r: r.hgetall(self._meta(conversation_id)))
        if not meta:
            return False
        if meta[b"tenant"].decode() != tenant:
            raise NotOwner(conversation_id)
        await self._forget([conversation_id])
        return True

    async def _forget(self, ids: list[str]) -> None:
        """Delete conversations and their index entries."""

        async def forget(r: Redis) -> None:
            for conversation_id in ids:
                tenant: Any = await r.hget(self._meta(conversation_id), "tenant")
                async with r.pipeline(transaction=False) as pipe:
                    pipe.delete(self._meta(conversation_id), self._msgs(conversation_id))
                    pipe.zrem(self._lru, conversation_id)
                    if tenant is not None:
                        pipe.zrem(self._tenant(tenant.decode()), conversation_id)
                    await pipe.execute()

        await self._run(forget)

    async def enforce_limits(self, max_active: int, idle_ttl: float) -> int:
        async def doomed(r: Redis) -> list[str]:
            found: list[Any] = []
            if idle_ttl:
                found += await r.zrangebyscore(self._lru, "-inf", time.time() - idle_ttl)
            excess: Any = await r.zcard(self._lru) - max_active
            if excess > 0:
                found += await r.zrange(self._lru, 0, excess - 1)
            return list(dict.fromkeys(i.decode() for i in found))

        ids = await self._run(doomed)
        if ids:
            await self._forget(ids)
        return len(ids)

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        index = self._tenant(tenant)

        async def page(r: Redis) -> tuple[list[ConversationInfo], bool]:
            start = 0
            if after is not None:
                rank: Any = await r.zrevrank(index, after)
                if rank is None:
                    return [], False
                start = rank + 1
            found: Any = await r.zrevrange(index, start, start + limit)
            ids = [i.decode() for i in found]
            async with r.pipeline(transaction=False) as pipe:
                for conversation_id in ids[:limit]:
                    pipe.hgetall(self._meta(conversation_id))
                metas = await pipe.execute()
            infos = [_info(i, m) for i, m in zip(ids, metas, strict=False) if m]
            return infos, len(ids) > limit

        return await self._run(page)

    async def close(self) -> None:
        """The link belongs to the app, which closes it."""
