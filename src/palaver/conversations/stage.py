"""The conversation stage of the pipeline: which conversation, what history goes upstream,
and what is stored once the completion succeeded."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from palaver.config import ConversationSettings
from palaver.conversations.history import merge
from palaver.errors import InvalidRequest, NotFound, ServiceUnavailable
from palaver.protocol import Json, Message
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    ConversationStore,
    Gone,
    StoredMessage,
    new_conversation_id,
    new_turn_id,
)
from palaver.tokens import Budget

log = logging.getLogger("palaver.conversations")
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")  # used with fullmatch


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
    epoch: int  # the conversation's incarnation when the turn began (see stores.base)
    auto: bool = False  # created for this request, which named none
    turn_id: str = field(default_factory=new_turn_id)
    budget: Budget | None = None  # the request's token budget, when its model's is known
    trimmed: int = 0  # stored messages left out of the request

    def counts(self, reply: Message) -> list[dict[str, int]] | None:
        """The token counts to store with the turn's messages and ``reply``."""
        return None if self.budget is None else self.budget.counts([*self.new, reply])


def deleted_in_flight(conversation_id: str) -> NotFound:
    return NotFound(
        f"The conversation '{conversation_id}' was deleted while this request was in flight; "
        "the reply was not stored.",
        param="conversation",
        code="conversation_not_found",
    )


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

    async def begin(
        self,
        tenant: str,
        named: str | None,
        header: bytes | None,
        payload: Json,
        budget: Budget | None = None,
    ) -> Turn | None:
        """Resolve the conversation and put its history into ``payload["messages"]``,
        trimmed to ``max_messages`` and to the ``budget``."""
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
        if conversation_id is None:
            if not self._settings.auto_create or not self.store.available:
                return None  # with the store down, answer without starting a conversation
            history: list[Message] = []
            epoch, auto = 1, True
            conversation_id = new_conversation_id()
        else:
            snapshot = await self.store.load(conversation_id, tenant)
            history = _history(snapshot.messages, budget)
            epoch, auto = snapshot.epoch, False
        merged = merge(history, payload["messages"], self._settings.max_messages, budget)
        payload["messages"] = merged.sent
        return Turn(
            conversation_id, tenant, merged.new, epoch, auto, budget=budget, trimmed=merged.trimmed
        )

    async def resume(
        self,
        tenant: str,
        conversation_id: str,
        new: list[Message],
        param: str,
        budget: Budget | None = None,
    ) -> tuple[Turn, list[Message]]:
        """A turn adding ``new`` to an existing conversation (404 if there is none), and the
        stored history it continues."""
        snapshot = await self.store.load(conversation_id, tenant)
        if snapshot.info is None:
            raise not_found(conversation_id, param)
        history = _history(snapshot.messages, budget)
        return Turn(conversation_id, tenant, new, snapshot.epoch, budget=budget), history

    async def commit(self, turn: Turn, reply: Message) -> bool:
        """Store the turn; False if an auto-created conversation could not be (store down)."""
        try:
            await self.store.append(
                turn.conversation_id,
                turn.tenant,
                [*turn.new, reply],
                epoch=turn.epoch,
                turn=turn.turn_id,
                counts=turn.counts(reply),
            )
        except Gone:
            raise deleted_in_flight(turn.conversation_id) from None
        except ServiceUnavailable:
            if not turn.auto:
                raise
            log.warning("conversation store unavailable: answering without a conversation")
            return False
        return True

    async def create(
        self, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        """A new conversation holding ``messages`` (trimmed like any other)."""
        while True:
            try:
                return await self.store.create(new_conversation_id(), tenant, metadata, messages)
            except AlreadyExists:  # pragma: no cover - 128 random bits
                continue

    async def add(
        self, conversation_id: str, tenant: str, messages: list[Message]
    ) -> ConversationInfo:
        """Append items to an existing conversation (404 if there is none)."""
        snapshot = await self.store.load(conversation_id, tenant)
        if snapshot.info is None:
            raise not_found(conversation_id)
        try:
            return await self.store.append(conversation_id, tenant, messages, epoch=snapshot.epoch)
        except Gone:
            raise not_found(conversation_id) from None


def _history(stored: list[StoredMessage], budget: Budget | None) -> list[Message]:
    """The stored messages, their tokens made known to the budget."""
    messages = [item.message for item in stored]
    if budget is not None:
        counts = [item.tokens for item in stored]
        budget.learn_all(messages, counts, [item.item_id for item in stored])
    return messages
