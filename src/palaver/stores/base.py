"""The conversation store protocol, which every backend (memory, sqlite, redis) implements.

A conversation has one owner (the tenant that made it); stores check ownership themselves
so that no backend can hand one tenant's messages to another. Every write is atomic: a turn's
messages are stored together or not at all, and concurrent appends never lose a message.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from palaver.protocol import Message

# Given every message of a conversation after an append, the indices of those to keep.
Selector = Callable[[Sequence[Message]], list[int]]


class NotOwner(Exception):
    """The conversation exists but belongs to another tenant."""


class AlreadyExists(Exception):
    """``create`` was given an id that is taken."""


@dataclass(slots=True)
class ConversationInfo:
    id: str
    tenant: str
    created_at: float
    updated_at: float
    message_count: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class StoredMessage:
    item_id: str
    created_at: float
    message: Message


def new_item_id() -> str:
    return "msg_" + secrets.token_hex(12)


def new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(16)


class ConversationStore(Protocol):
    @property
    def available(self) -> bool:
        """False while the backend is known to be unreachable."""
        ...

    async def load(
        self, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, list[StoredMessage]] | None:
        """The conversation and its messages, oldest first; None if unknown (or idle-expired).
        Raises ``NotOwner``."""
        ...

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        """A new conversation. Raises ``AlreadyExists``."""
        ...

    async def append(
        self, conversation_id: str, tenant: str, messages: list[Message], select: Selector
    ) -> ConversationInfo:
        """Append messages (creating the conversation if unknown), then keep only what
        ``select`` chooses, atomically. Raises ``NotOwner``."""
        ...

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None: ...

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        """True if it existed (and was the tenant's)."""
        ...

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        """The tenant's conversations, newest first, after the one with id ``after``;
        and whether there are more."""
        ...

    async def enforce_limits(self, max_active: int, idle_ttl: float) -> int:
        """Remove the least recently used past ``max_active`` and those idle for longer than
        ``idle_ttl`` seconds (0: no limit). Returns how many went."""
        ...

    async def close(self) -> None: ...
