"""The conversation stage of the pipeline: which conversation, what history goes upstream,
and what is stored once the completion succeeded."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from palaver.config import ConversationSettings
from palaver.errors import InvalidRequest, NotFound, ServiceUnavailable
from palaver.history import merge
from palaver.priority import keep
from palaver.protocol import Json, Message
from palaver.stores import (
    AlreadyExists,
    ConversationInfo,
    ConversationStore,
    NotOwner,
    new_conversation_id,
)

log = logging.getLogger("palaver.conversations")
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def not_found(conversation_id: str, param: str | None = None) -> NotFound:
    return NotFound(
        f"No conversation found with id '{conversation_id}'.",
        param=param,
        code="conversation_not_found",
    )


@dataclass(slots=True)
class Turn:
    """One chat request's place in a conversation, until its reply is stored."""

    conversation_id: str
    tenant: str
    new: list[Message]
    auto: bool = False  # created for this request, which named none


def reply_message(message: Json) -> Message:
    """The assistant message to store: what the next request needs, nothing more."""
    stored: Message = {"role": "assistant", "content": message.get("content")}
    if message.get("tool_calls"):
        stored["tool_calls"] = message["tool_calls"]
    if message.get("refusal"):
        stored["refusal"] = message["refusal"]
    return stored


class Conversations:
    def __init__(self, store: ConversationStore, settings: ConversationSettings) -> None:
        self.store = store
        self._settings = settings
        self._select = functools.partial(_select, limit=settings.max_messages)

    async def begin(
        self, tenant: str, named: str | None, header: bytes | None, payload: Json
    ) -> Turn | None:
        """Resolve the conversation and put its history into ``payload["messages"]``."""
        conversation_id = named
        if header is not None:
            from_header = header.decode("latin-1").strip()
            if not ID_PATTERN.fullmatch(from_header):
                raise InvalidRequest(
                    "Invalid X-Conversation-Id: use 1 to 128 of A-Z, a-z, 0-9, '_' and '-'.",
                    param="conversation",
                )
            if conversation_id is not None and conversation_id != from_header:
                raise InvalidRequest(
                    "The 'conversation' field and the X-Conversation-Id header disagree.",
                    param="conversation",
                )
            conversation_id = from_header
        auto = conversation_id is None
        if conversation_id is None:
            if not self._settings.auto_create or not self.store.available:
                return None  # with the store down, answer without starting a conversation
            conversation_id = new_conversation_id()
            history: list[Message] = []
        else:
            try:
                loaded = await self.store.load(conversation_id, tenant)
            except NotOwner:
                raise not_found(conversation_id, "conversation") from None
            history = [] if loaded is None else [s.message for s in loaded[1]]
        merged = merge(history, payload["messages"], self._settings.max_messages)
        payload["messages"] = merged.sent
        return Turn(conversation_id, tenant, merged.new, auto)

    async def commit(self, turn: Turn, reply: Message) -> bool:
        """Store the turn; False if an auto-created conversation could not be (store down)."""
        try:
            info = await self.store.append(
                turn.conversation_id, turn.tenant, [*turn.new, reply], self._select
            )
        except NotOwner:
            raise not_found(turn.conversation_id, "conversation") from None
        except ServiceUnavailable:
            if not turn.auto:
                raise
            log.warning("conversation store unavailable: answering without a conversation")
            return False
        await self._after_write(info)
        return True

    async def create(
        self, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        """A new conversation holding ``messages`` (trimmed like any other)."""
        kept = [messages[i] for i in self._select(messages)]
        while True:
            try:
                info = await self.store.create(new_conversation_id(), tenant, metadata, kept)
                break
            except AlreadyExists:  # pragma: no cover - 128 random bits
                continue
        await self._after_write(info)
        return info

    async def add(
        self, conversation_id: str, tenant: str, messages: list[Message]
    ) -> ConversationInfo:
        try:
            info = await self.store.append(conversation_id, tenant, messages, self._select)
        except NotOwner:
            raise not_found(conversation_id) from None
        await self._after_write(info)
        return info

    async def _after_write(self, info: ConversationInfo) -> None:
        if info.created_at == info.updated_at:  # a conversation was born: mind the limits
            try:
                await self.store.enforce_limits(
                    self._settings.max_active, self._settings.idle_ttl_seconds
                )
            except ServiceUnavailable:  # the turn is stored; cleanup happens on a later one
                log.warning("could not enforce conversation limits: store unavailable")


def _select(messages: Sequence[Message], limit: int) -> list[int]:
    return keep(messages, limit)
