"""Conversation stores behind one protocol: memory, sqlite (and redis with scale-out)."""

from __future__ import annotations

from palaver.config import ConversationSettings
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    ConversationStore,
    NotOwner,
    StoredMessage,
    new_conversation_id,
)
from palaver.stores.memory import MemoryStore
from palaver.stores.sqlite import SqliteStore

__all__ = [
    "AlreadyExists",
    "ConversationInfo",
    "ConversationStore",
    "MemoryStore",
    "NotOwner",
    "SqliteStore",
    "StoredMessage",
    "new_conversation_id",
    "open_store",
]


async def open_store(settings: ConversationSettings) -> ConversationStore:
    if settings.backend == "memory":
        return MemoryStore(settings.idle_ttl_seconds)
    if settings.backend == "sqlite":
        store = SqliteStore(settings.path, settings.idle_ttl_seconds)
        await store.open()
        return store
    raise NotImplementedError(f"conversations.backend = {settings.backend!r} is not available yet")
