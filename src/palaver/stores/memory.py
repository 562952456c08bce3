"""Conversations in process memory: fast, per process, gone on restart."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from palaver.conversations.priority import keep
from palaver.protocol import Message
from palaver.stores.base import (
    TOMBSTONE_SECONDS,
    AlreadyExists,
    ConversationInfo,
    Counts,
    Gone,
    Limits,
    Snapshot,
    StoredMessage,
    counted,
    new_item_id,
)

Key = tuple[str, str]  # (tenant, id)
MAX_TOMBSTONES = 100_000  # memory stays bounded; the oldest are forgotten first


@dataclass(slots=True)
class _Conversation:
    info: ConversationInfo
    messages: list[StoredMessage] = field(default_factory=list)


class MemoryStore:
    """Everything happens between two awaits, so the event loop makes each call atomic."""

    available = True

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._items: OrderedDict[Key, _Conversation] = OrderedDict()  # least recently used first
        self._tombstones: dict[Key, tuple[int, float]] = {}  # deleted epoch, when

    def _get(self, key: Key) -> _Conversation | None:
        found = self._items.get(key)
        idle_ttl = self._limits.idle_ttl
        if found is not None and idle_ttl and found.info.updated_at < time.time() - idle_ttl:
            self._remove(key)
            return None
        return found

    def _remove(self, key: Key) -> None:
        gone = self._items.pop(key)
        tombstones = self._tombstones
        tombstones.pop(key, None)  # re-inserted last: the dict stays oldest first
        tombstones[key] = (gone.info.epoch, time.time())
        if len(tombstones) > MAX_TOMBSTONES:
            del tombstones[next(iter(tombstones))]

    def _next_epoch(self, key: Key) -> int:
        tombstone = self._tombstones.get(key)
        return 1 if tombstone is None else tombstone[0] + 1

    def _trim(self, conversation: _Conversation) -> None:
        messages = conversation.messages
        if len(messages) > self._limits.max_messages:
            kept = keep([s.message for s in messages], self._limits.max_messages)
            conversation.messages = [messages[i] for i in kept]
        conversation.info.message_count = len(conversation.messages)

    def _evict(self) -> int:
        removed = 0
        while len(self._items) > self._limits.max_active:
            self._remove(next(iter(self._items)))
            removed += 1
        return removed

    async def load(self, conversation_id: str, tenant: str) -> Snapshot:
        key = (tenant, conversation_id)
        found = self._get(key)
        if found is None:
            return Snapshot(None, [], self._next_epoch(key))
        return Snapshot(found.info, list(found.messages), found.info.epoch)

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        key = (tenant, conversation_id)
        if self._get(key) is not None:
            raise AlreadyExists(conversation_id)
        now = time.time()
        info = ConversationInfo(
            conversation_id, tenant, now, now, 0, dict(metadata), self._next_epoch(key)
        )
        created = _Conversation(info, [StoredMessage(new_item_id(), now, m) for m in messages])
        self._trim(created)
        self._items[key] = created
        self._evict()
        return info

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
        key = (tenant, conversation_id)
        found = self._get(key)
        now = time.time()
        if found is None:
            if epoch != self._next_epoch(key):
                raise Gone(conversation_id)
            found = _Conversation(ConversationInfo(conversation_id, tenant, now, now, epoch=epoch))
            self._items[key] = found
        elif found.info.epoch != epoch:
            raise Gone(conversation_id)
        found.messages.extend(
            StoredMessage(new_item_id(), now, m, c) for m, c in counted(messages, counts)
        )
        self._trim(found)
        found.info.updated_at = now
        self._items.move_to_end(key)
        self._evict()
        return found.info

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None:
        found = self._get((tenant, conversation_id))
        if found is None:
            return None
        found.info.metadata = dict(metadata)
        return found.info

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        key = (tenant, conversation_id)
        if self._get(key) is None:
            return False
        self._remove(key)
        return True

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        mine = sorted(
            (c.info for (owner, _), c in self._items.items() if owner == tenant),
            key=lambda info: (info.created_at, info.id),
            reverse=True,
        )
        if after is not None:
            ids = [info.id for info in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        return mine[:limit], len(mine) > limit

    async def enforce_limits(self) -> int:
        removed = 0
        now = time.time()
        if self._limits.idle_ttl:
            cutoff = now - self._limits.idle_ttl
            for key in [k for k, c in self._items.items() if c.info.updated_at < cutoff]:
                self._remove(key)
                removed += 1
        removed += self._evict()
        forgotten = now - TOMBSTONE_SECONDS
        for key in [k for k, (_, at) in self._tombstones.items() if at < forgotten]:
            del self._tombstones[key]
        return removed

    async def close(self) -> None:
        self._items.clear()
        self._tombstones.clear()
