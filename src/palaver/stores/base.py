"""The conversation store protocol, which every backend (memory, sqlite, redis) implements.

A conversation is named by its tenant (the API key it belongs to) and its id: two tenants may
use the same id and each sees only its own, so no tenant can learn what ids another uses.

Every write is atomic: a turn's messages, the trim to ``max_messages``, the indexes (recent
use, the tenant's list) and the eviction of the least recently used past ``max_active``
change together or not at all, and concurrent appends never lose a message.

Deletion is final. Each incarnation of an id has an *epoch*: 1 for the first, one more than
the last deleted one's for a conversation created after a deletion (a tombstone remembers the
deleted epoch for a day). A turn reads the epoch when it begins and its append names it, so a
turn that began before a deletion cannot bring the conversation back when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from palaver import ids
from palaver.protocol import Message

TOMBSTONE_SECONDS = 86_400.0  # how long a deleted conversation's epoch is remembered


class AlreadyExists(Exception):
    """``create`` was given an id that is taken."""


class Gone(Exception):
    """The conversation a write expected was deleted (or replaced) meanwhile."""


class StoreBusy(Exception):
    """The backend is reachable but this process cannot use it right now (all connections
    busy): the request fails, and nothing suggests the backend is down."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_messages: int = 50  # per conversation, trimmed by instruction priority
    max_active: int = 1000  # conversations kept; the least recently used go
    idle_ttl: float = 0.0  # seconds without use before a conversation goes (0: never)


@dataclass(slots=True)
class ConversationInfo:
    id: str
    tenant: str
    created_at: float
    updated_at: float
    message_count: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    epoch: int = 1


Counts = dict[str, int]  # a message's prompt tokens, by encoding name ("o200k_base": 12)


@dataclass(slots=True)
class StoredMessage:
    item_id: str
    created_at: float
    message: Message
    tokens: Counts | None = None  # kept with it when its model's window was known


def counted(
    messages: list[Message], counts: Sequence[Counts] | None
) -> list[tuple[Message, Counts | None]]:
    """Each message with its counts (None where there are none)."""
    if counts is None:
        return [(m, None) for m in messages]
    return list(zip(messages, counts, strict=True))


@dataclass(slots=True)
class Snapshot:
    """What ``load`` found: the conversation (None if there is none), its messages oldest
    first, and the epoch an append must name to continue it (or to start it)."""

    info: ConversationInfo | None
    messages: list[StoredMessage]
    epoch: int


def new_item_id() -> str:
    return "msg_" + ids.token_hex(12)


def new_conversation_id() -> str:
    return "conv_" + ids.token_hex(16)


def new_turn_id() -> str:
    return ids.token_hex(12)


class ConversationStore(Protocol):
    @property
    def available(self) -> bool:
        """False while the backend is known to be unreachable."""
        ...

    async def load(self, conversation_id: str, tenant: str) -> Snapshot:
        """The conversation as it is now (idle-expired ones are removed and reported absent)."""
        ...

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        """A new conversation holding ``messages`` (trimmed). Raises ``AlreadyExists``."""
        ...

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
        """Append ``messages`` to the conversation of ``epoch`` (starting it if that epoch is
        the next one), trim it, and evict past ``max_active``, atomically. ``turn`` makes the
        append idempotent where a lost reply could make the caller repeat it; ``counts``, one
        per message, are kept with them.
        Raises ``Gone`` when that epoch was deleted meanwhile."""
        ...

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None: ...

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        """True if it existed. Leaves a tombstone: in-flight turns on it are refused."""
        ...

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        """The tenant's conversations, newest first, after the one with id ``after``;
        and whether there are more."""
        ...

    async def enforce_limits(self) -> int:
        """Remove the least recently used past ``max_active`` and those idle past ``idle_ttl``.
        Returns how many went."""
        ...

    async def close(self) -> None: ...
