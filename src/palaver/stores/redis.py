"""Conversations in Redis, shared by palaver processes on many machines.

Keys (``p`` is ``redis.key_prefix``, ``t`` the tenant, ``-`` for none); the ``{conv}`` hash
tag keeps them in one Redis Cluster slot, so one script may touch them all:

    p{conv}:m:<t>:<id>    hash: created_at, updated_at, count, metadata, epoch
    p{conv}:l:<t>:<id>    list: one JSON record per message, oldest first
    p{conv}:s:<t>:<id>    list: each message's shape, for trimming (see ``redis_scripts``)
    p{conv}:k:<t>:<id>    sorted set: the ids of the turns appended in the last minutes
    p{conv}:x:<t>:<id>    the epoch of the deleted conversation (a tombstone, one day)
    p{conv}:lru           sorted set of "<t>:<id>" by last use (eviction)
    p{conv}:t:<t>         sorted set of a tenant's ids by creation (listing)

Every write is one Lua script (``redis_scripts``). A turn is stored exactly once or not at all,
whatever the network does: each append carries a turn id (a repeat of an applied append is a
no-op) and a deadline on Redis's clock (an append that reaches Redis after it does nothing).
When an append's reply is lost, it is repeated until the deadline has surely passed; only
then does the client hear that its turn was not stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError
from redis.typing import EncodableT

from palaver.errors import ServiceUnavailable
from palaver.protocol import Message
from palaver.redis_link import RedisBusy, RedisDown, RedisLink
from palaver.stores import redis_scripts
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    Counts,
    Gone,
    Limits,
    Snapshot,
    StoredMessage,
    counted,
    new_item_id,
    new_turn_id,
)
from palaver.stores.redis_layout import migrate_v1

T = TypeVar("T")
log = logging.getLogger("palaver.redis")

COMMIT_WINDOW = 1.0  # seconds an append may take to reach Redis before it is void
CLOCK_MARGIN = 1.0  # after the deadline: clock error, and time to hear a late answer
RETRY_PAUSE = 0.05


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Conversation storage (Redis) is unreachable; the conversation was not touched. "
        "Retry shortly."
    )


def busy() -> ServiceUnavailable:
    return ServiceUnavailable(
        "Conversation storage (Redis) is busy: every connection of this palaver is in use; "
        "the conversation was not touched. Retry shortly."
    )


def shape(message: Message) -> bytes:
    """What trimming needs to know of a message (see ``redis_scripts``)."""
    role = message.get("role")
    if role in ("system", "developer"):
        return b'["s"]'
    if role == "user":
        return b'["u"]'
    if role == "assistant":
        calls = message.get("tool_calls") or ()
        ids = [str(c["id"]) for c in calls if isinstance(c, dict) and "id" in c]
        return orjson.dumps(["a", *ids])
    if role == "tool":
        return orjson.dumps(["t", str(message.get("tool_call_id"))])
    return b'["o"]'


def _record(message: Message, now: float, counts: Counts | None) -> bytes:
    if counts is None:
        return orjson.dumps({"i": new_item_id(), "t": now, "m": message})
    return orjson.dumps({"i": new_item_id(), "t": now, "m": message, "k": counts})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reply_info(conversation_id: str, tenant: str, reply: list[Any]) -> ConversationInfo:
    created, updated, count, metadata, epoch = reply[1:6]
    return ConversationInfo(
        conversation_id,
        tenant,
        float(created),
        float(updated),
        int(count),
        orjson.loads(metadata),
        int(epoch),
    )


class RedisStore:
    def __init__(self, link: RedisLink, limits: Limits | None = None) -> None:
        self._link = link
        self._p = link.prefix
        self._limits = limits or Limits()
        self._migrated = False
        client = link.client
        self._read = client.register_script(redis_scripts.READ)
        self._write = client.register_script(redis_scripts.WRITE)
        self._set_metadata = client.register_script(redis_scripts.SET_METADATA)
        self._delete = client.register_script(redis_scripts.DELETE)
        self._enforce = client.register_script(redis_scripts.ENFORCE)

    async def open(self) -> None:
        """Move conversations stored by palaver 0.1 to this layout (once per Redis). With
        Redis unreachable at startup, the first call that reaches it does this first."""
        try:
            await self._migrate(self._link.client)
        except (RedisError, OSError):
            log.warning("Redis is unreachable at startup: conversations are checked later")

    async def _migrate(self, r: Redis) -> None:
        moved = await migrate_v1(r, self._p)
        self._migrated = True
        if moved:
            log.info("moved %d conversations of palaver 0.1 to the per-key layout", moved)

    @property
    def available(self) -> bool:
        return not self._link.down

    def _key(self, kind: str, tenant: str, conversation_id: str) -> str:
        return f"{self._p}{{conv}}:{kind}:{tenant or '-'}:{conversation_id}"

    def _keys(self, tenant: str, conversation_id: str) -> list[str]:
        keys = [self._key(kind, tenant, conversation_id) for kind in "mlskx"]
        return [*keys, f"{self._p}{{conv}}:lru", f"{self._p}{{conv}}:t:{tenant or '-'}"]

    async def _run(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        return await self._guarded(lambda: self._link.run(call))

    async def _run_on(self, call: Callable[[Connection], Awaitable[T]]) -> T:
        """Like ``_run``, with one pooled connection for ``call``."""
        return await self._guarded(lambda: self._link.on_connection(call))

    async def _guarded(self, send: Callable[[], Awaitable[T]]) -> T:
        """``send()`` once the layout is migrated, the link's failures told as HTTP errors."""
        try:
            if not self._migrated:
                await self._link.run(self._migrate)
            return await send()
        except RedisBusy:
            raise busy() from None
        except RedisDown:
            raise unavailable() from None

    # -- reading ---------------------------------------------------------------------------

    async def load(self, conversation_id: str, tenant: str) -> Snapshot:
        meta_key = self._key("m", tenant, conversation_id)
        list_key = self._key("l", tenant, conversation_id)
        tombstone = self._key("x", tenant, conversation_id)

        async def load(connection: Connection) -> list[Any]:
            return await self._eval(connection, self._read, [meta_key, list_key, tombstone], [])

        flat, raw, dead = await self._run_on(load)
        next_epoch = int(dead or 0) + 1
        if not flat:
            return Snapshot(None, [], next_epoch)
        meta = dict(zip(flat[::2], flat[1::2], strict=True))
        info = ConversationInfo(
            conversation_id,
            tenant,
            float(meta[b"created_at"]),
            float(meta[b"updated_at"]),
            int(meta.get(b"count", b"0")),
            orjson.loads(meta.get(b"metadata", b"{}")),
            int(meta.get(b"epoch", b"1")),
        )
        idle_ttl = self._limits.idle_ttl
        if idle_ttl and info.updated_at < time.time() - idle_ttl:
            await self.delete(conversation_id, tenant)
            return Snapshot(None, [], info.epoch + 1)
        records = orjson.loads(b"[" + b",".join(raw) + b"]")  # one parse, not one a message
        return Snapshot(
            info,
            [StoredMessage(r["i"], r["t"], r["m"], r.get("k")) for r in records],
            info.epoch,
        )

    # -- writing ---------------------------------------------------------------------------

    async def _commit(
        self,
        conversation_id: str,
        tenant: str,
        messages: list[Message],
        *,
        mode: str,
        epoch: int,
        turn: str,
        metadata: dict[str, str],
        counts: Sequence[Counts] | None = None,
    ) -> ConversationInfo:
        """Run the write script so that it applies exactly once or not at all, and say which.

        Its deadline is set as it is sent, on a connection already in hand (waiting for one
        sends nothing). Every copy sent carries the same turn id and deadline."""
        try:
            offset = await self._link.clock_offset()
        except RedisBusy:
            raise busy() from None
        except RedisDown:
            raise unavailable() from None
        if not self._migrated:
            await self._run(self._migrate)
        now = time.time()
        limits = self._limits
        keys = self._keys(tenant, conversation_id)
        args: list[EncodableT] = [
            self._p,
            tenant or "-",
            conversation_id,
            mode,
            epoch,
            turn,
            "0",  # the deadline, set when first sent
            limits.max_messages,
            limits.max_active,
            repr(limits.idle_ttl),
            orjson.dumps(metadata),
            len(messages),
            *(_record(m, now, c) for m, c in counted(messages, counts)),
            *(shape(m) for m in messages),
        ]
        deadline: float | None = None

        async def write(connection: Connection) -> list[Any]:
            nonlocal deadline
            if deadline is None:
                deadline = time.time() + offset + COMMIT_WINDOW
                args[6] = repr(deadline)
            return await self._eval(connection, self._write, keys, args)

        if self._link.down:  # known unreachable: nothing is sent
            raise unavailable()
        try:
            reply = await self._link.on_connection(write, force=True)
        except RedisBusy:  # no connection was free: nothing was sent
            raise busy() from None
        except RedisDown:
            if deadline is None:  # it failed to connect: nothing was sent
                raise unavailable() from None
            reply = await self._settle(write, deadline - offset + CLOCK_MARGIN)
        status = _text(reply[0])
        if status in ("ok", "dup") and len(reply) > 1:
            return _reply_info(conversation_id, tenant, reply)
        if status == "dup":  # applied, then deleted by someone else: it was stored
            return ConversationInfo(conversation_id, tenant, now, now, epoch=epoch)
        if status == "gone":
            raise Gone(conversation_id)
        if status == "exists":
            raise AlreadyExists(conversation_id)
        raise unavailable()  # "late": it reached Redis after its deadline and did nothing

    @staticmethod
    async def _eval(
        connection: Connection, script: AsyncScript, keys: list[str], args: list[EncodableT]
    ) -> list[Any]:
        """``script`` run on ``connection``, sent as is (the client's command layers skipped)."""
        await connection.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            reply: list[Any] = await connection.read_response()
        except NoScriptError:  # Redis restarted or its scripts were flushed: nothing ran
            await connection.send_command("EVAL", script.script, len(keys), *keys, *args)
            reply = await connection.read_response()
        return reply

    async def _settle(
        self, write: Callable[[Connection], Awaitable[list[Any]]], give_up: float
    ) -> list[Any]:
        """The write may or may not have been applied: repeat it until Redis answers. A copy
        of an applied write answers "dup", one that arrives after the deadline "late" (and
        then no earlier copy can apply any more either). Past ``give_up`` the deadline has
        surely passed on Redis's clock too: no copy still on its way can apply."""
        while (left := give_up - time.time()) > 0:
            await asyncio.sleep(min(RETRY_PAUSE, left))
            try:
                async with asyncio.timeout(max(give_up - time.time(), 0.001)):
                    return await self._link.on_connection(write, force=True)
            except (RedisDown, TimeoutError):
                continue
        log.warning("a conversation write stayed in doubt past its deadline: not stored")
        raise unavailable()

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        return await self._commit(
            conversation_id,
            tenant,
            messages,
            mode="create",
            epoch=0,
            turn=new_turn_id(),
            metadata=metadata,
        )

    async def append(
        self,
        conversation_id: str,
        tenant: str,
        messages: list[Message],
        *,
        epoch: int,
        turn: str | None = None,
        counts: Sequence[Counts] | None = None,
    ) -> ConversationInfo:
        return await self._commit(
            conversation_id,
            tenant,
            messages,
            mode="turn",
            epoch=epoch,
            turn=turn or new_turn_id(),
            metadata={},
            counts=counts,
        )

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None:
        keys = self._keys(tenant, conversation_id)
        args: list[EncodableT] = [self._p, tenant or "-", conversation_id, self._limits.idle_ttl]

        async def update(r: Redis) -> list[Any]:
            reply: list[Any] = await self._set_metadata(
                keys=keys, args=[*args, orjson.dumps(metadata)], client=r
            )
            return reply

        reply = await self._run(update)
        if _text(reply[0]) != "ok":
            return None
        return _reply_info(conversation_id, tenant, reply)

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        keys = self._keys(tenant, conversation_id)
        args: list[EncodableT] = [self._p, tenant or "-", conversation_id, self._limits.idle_ttl]

        async def delete(r: Redis) -> int:
            return int(await self._delete(keys=keys, args=args, client=r))

        return bool(await self._run(delete))

    async def enforce_limits(self) -> int:
        keys = [f"{self._p}{{conv}}:lru"]
        args: list[EncodableT] = [self._p, self._limits.max_active, self._limits.idle_ttl]

        async def enforce(r: Redis) -> int:
            return int(await self._enforce(keys=keys, args=args, client=r))

        return await self._run(enforce)

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        index = f"{self._p}{{conv}}:t:{tenant or '-'}"

        async def page(r: Redis) -> tuple[list[Any], list[Any]]:
            start = 0
            if after is not None:
                rank: Any = await r.zrevrank(index, after)
                if rank is None:
                    return [], []
                start = rank + 1
            found: Any = await r.zrevrange(index, start, start + limit)
            ids = [_text(i) for i in found]
            async with r.pipeline(transaction=False) as pipe:
                for conversation_id in ids[:limit]:
                    pipe.hgetall(self._key("m", tenant, conversation_id))
                metas: list[Any] = await pipe.execute()
            return ids, metas

        ids, metas = await self._run(page)
        infos = [
            ConversationInfo(
                conversation_id,
                tenant,
                float(meta[b"created_at"]),
                float(meta[b"updated_at"]),
                int(meta.get(b"count", b"0")),
                orjson.loads(meta.get(b"metadata", b"{}")),
                int(meta.get(b"epoch", b"1")),
            )
            for conversation_id, meta in zip(ids, metas, strict=False)
            if meta
        ]
        return infos, len(ids) > limit

    async def close(self) -> None:
        """The link belongs to the app, which closes it."""
