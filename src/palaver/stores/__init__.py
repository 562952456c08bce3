"""Conversation stores behind one protocol: memory, sqlite and redis."""

from __future__ import annotations

from palaver.config import ConversationSettings
from palaver.redis_link import RedisLink
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    ConversationStore,
    Gone,
    Limits,
    Snapshot,
    StoredMessage,
    new_conversation_id,
    new_turn_id,
)
from palaver.stores.memory import MemoryStore
from palaver.stores.redis import RedisStore
from palaver.stores.sqlite import SqliteStore

__all__ = [
    "AlreadyExists",
    "ConversationInfo",
    "ConversationStore",
    "Gone",
    "Limits",
    "MemoryStore",
    "RedisStore",
    "Snapshot",
    "SqliteStore",
    "StoredMessage",
    "new_conversation_id",
    "new_turn_id",
    "open_store",
]


def limits_of(settings: ConversationSettings) -> Limits:
    return Limits(settings.max_messages, settings.max_active, settings.idle_ttl_seconds)


async def open_store(settings: ConversationSettings, link: RedisLink | None) -> ConversationStore:
    limits = limits_of(settings)
    if settings.backend == "redis":
        assert link is not None
        redis = RedisStore(link, limits)
        await redis.open()
        return redis
    if settings.backend == "memory":
        return MemoryStore(limits)
    if settings.backend == "sqlite":
        sqlite = SqliteStore(settings.path, limits)
        await sqlite.open()
        return sqlite
    raise ValueError(f"unknown conversations.backend {settings.backend!r}")
