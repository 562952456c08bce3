"""Conversations in process memory: fast, per process, gone on restart."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from palaver.protocol import Message
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    NotOwner,
    Selector,
    StoredMessage,
    new_item_id,
)


@dataclass(slots=True)
class _Conversation:
    info: ConversationInfo
    messages: list[StoredMessage] = field(default_factory=list)


class MemoryStore:
    """Everything happens between two awaits, so the event loop makes each call atomic."""

    available = True

    def __init__(self, idle_ttl: float = 0.0) -> None:
        self._idle_ttl = idle_ttl
        self._items: OrderedDict[str, _Conversation] = OrderedDict()  # least recently used first

    def _get(self, conversation_id: str, tenant: str) -> _Conversation | None:
        found = self._items.get(conversation_id)
        if found is None:
            return None
        if self._idle_ttl and found.info.updated_at < time.time() - self._idle_ttl:
            del self._items[conversation_id]
            return None
        if found.info.tenant != tenant:
            raise NotOwner(conversation_id)
        return found

    async def load(
        self, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, list[StoredMessage]] | None:
        found = self._get(conversation_id, tenant)
        return None if found is None else (found.info, list(found.messages))

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        if conversation_id in self._items:
            raise AlreadyExists(conversation_id)
        now = time.time()
        info = ConversationInfo(conversation_id, tenant, now, now, len(messages), dict(metadata))
        stored = [StoredMessage(new_item_id(), now, m) for m in messages]
        self._items[conversation_id] = _Conversation(info, stored)
        return info

    async def append(
        self, conversation_id: str, tenant: str, messages: list[Message], select: Selector
    ) -> ConversationInfo:
        found = self._get(conversation_id, tenant)
        now = time.time()
        if found is None:
            found = _Conversation(ConversationInfo(conversation_id, tenant, now, now))
            self._items[conversation_id] = found
        found.messages.extend(StoredMessage(new_item_id(), now, m) for m in messages)
        kept = select([s.message for s in found.messages])
        if len(kept) != len(found.messages):
            found.messages = [found.messages[i] for i in kept]
        found.info.updated_at = now
        found.info.message_count = len(found.messages)
        self._items.move_to_end(conversation_id)
        return found.info

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None:
        found = self._get(conversation_id, tenant)
        if found is None:
            return None
        found.info.metadata = dict(metadata)
        return found.info

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        if self._get(conversation_id, tenant) is None:
            return False
        del self._items[conversation_id]
        return True

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        mine = sorted(
            (c.info for c in self._items.values() if c.info.tenant == tenant),
            key=lambda info: (info.created_at, info.id),
            reverse=True,
        )
        if after is not None:
            ids = [info.id for info in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        return mine[:limit], len(mine) > limit

    async def enforce_limits(self, max_active: int, idle_ttl: float) -> int:
        removed = 0
        if idle_ttl:
            cutoff = time.time() - idle_ttl
            for key in [k for k, c in self._items.items() if c.info.updated_at < cutoff]:
                del self._items[key]
                removed += 1
        while len(self._items) > max_active:
            self._items.popitem(last=False)
            removed += 1
        return removed

    async def close(self) -> None:
        self._items.clear()
