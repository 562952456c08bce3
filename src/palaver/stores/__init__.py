"""Conversation stores behind one protocol: memory, sqlite (and redis with scale-out)."""

from __future__ import annotations

from palaver.config import ConversationSettings
from palaver.redis_link import RedisLink
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    ConversationStore,
    NotOwner,
    StoredMessage,
    new_conversation_id,
)
from palaver.stores.memory import MemoryStore
from palaver.stores.redis import RedisStore
from palaver.stores.sqlite import SqliteStore

__all__ = [
    "AlreadyExists",
    "ConversationInfo",
    "ConversationStore",
    "MemoryStore",
    "NotOwner",
    "RedisStore",
    "SqliteStore",
    "StoredMessage",
    "new_conversation_id",
    "open_store",
]


async def open_store(settings: ConversationSettings, link: RedisLink | None) -> ConversationStore:
    if settings.backend == "redis":
        assert link is not None
        return RedisStore(link, settings.idle_ttl_seconds)
    if settings.backend == "memory":
        return MemoryStore(settings.idle_ttl_seconds)
    if settings.backend == "sqlite":
        store = SqliteStore(settings.path, settings.idle_ttl_seconds)
        await store.open()
        return store
    raise ValueError(f"unknown conversations.backend {settings.backend!r}")
